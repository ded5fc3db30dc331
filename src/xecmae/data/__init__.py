"""Reading, simulating and streaming XEC events: ROOT inputs, the event generator, sharded batches."""
