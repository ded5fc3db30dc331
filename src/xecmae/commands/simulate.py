"""``xecmae simulate``: generate XEC events into ROOT TTree(s) with the built-in event generator."""

from __future__ import annotations

import argparse
import time

from xecmae.commands import add_dead_channels_option

DEFAULT_THREADS = 1

EPILOG = """\
output: a TTree 'tree' with npho and relative_time (float[4760], photons and seconds; 1e10 marks
a dead channel) and the truth branches energyTruth (GeV), timeTruth (ns), uvwTruth, xyzTruth,
xyzVTX (cm), emiVec, emiAng (deg), run, event. With --files K > 1 the events are split into
K files FILE_0.root ... FILE_{K-1}.root, event numbers continuing across them. Files appear only
when complete. Without files, data.train_path: "sim://signal?seed=1" streams the same generator
(its epoch 0 holds the events of --seed 1; every later epoch new ones).

examples:
  xecmae simulate --events 10000 --out signal.root --seed 1
  xecmae simulate --events 100000 --out flat.root --spectrum flat:15:60 --files 4
  xecmae simulate --events 1000 --out run7.root --dead-channels dead_ids.txt --run 7
  xecmae simulate --events 1000 --out boards.root --dead-channels clustered:0.05:3
  xecmae simulate --events 1000 --out ideal.root --detector ideal
  xecmae simulate --events 1000 --out diffuse.root --disable gains,angular --detector-param scattering_length=30

detector: 'realistic' (default) simulates the components shower, scattering, absorption, angular,
gains, excess_noise, dead_clusters (and pileup with --enable pileup); 'ideal' is the point-source
response with Poisson photoelectrons only. Parameters: see xecmae.simulate.spec.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--events", "-n", type=int, required=True, metavar="N", help="number of events (N > 0)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE.root", help="output ROOT file")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default 0)")
    parser.add_argument("--spectrum", default="signal", metavar="SPECTRUM",
                        help="signal (52.83 MeV) | flat:EMIN:EMAX (MeV, 'flat' = 15:60) | background "
                             "(falling, 10-60 MeV)")
    dead = parser.add_mutually_exclusive_group()
    dead.add_argument("--dead-fraction", type=float, default=0.01, metavar="F",
                      help="fraction of dead channels, fixed per seed and run (default 0.01)")
    add_dead_channels_option(dead, "the dead channels (replaces --dead-fraction; a per-run table takes --run)")
    parser.add_argument("--files", type=int, default=1, metavar="K",
                        help="split the events into K files FILE_0.root ... (default 1)")
    parser.add_argument("--run", type=int, default=1, help="run number written to every event (default 1)")
    parser.add_argument("--first-event", type=int, default=0, help="number of the first event (default 0)")
    parser.add_argument("--chunk", type=int, default=512, help="events per chunk / ROOT basket (default 512)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"threads generating events, besides the one writing (default {DEFAULT_THREADS})")
    parser.add_argument("--compression", default="lz4", choices=("lz4", "zlib", "lzma", "none"),
                        help="ROOT compression (default lz4)")
    parser.add_argument("--tree", default="tree", help="TTree name (default tree)")
    parser.add_argument("--attenuation-length", type=float, default=None,
                        help="light attenuation length in cm (default: none)")
    parser.add_argument("--detector", default="realistic", metavar="NAME",
                        help="detector response: realistic (default) or ideal")
    parser.add_argument("--disable", default="", metavar="LIST",
                        help="comma-separated realistic components to switch off, e.g. scattering,gains")
    parser.add_argument("--enable", default="", metavar="LIST", help="components to switch on, e.g. pileup")
    parser.add_argument("--detector-param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a detector parameter, e.g. scattering_length=30 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from xecmae.data.deadchannels import dead_channels
    from xecmae.errors import UserError
    from xecmae.simulate import EventGenerator, detector_spec, write_root
    from xecmae.simulate.spec import parse_parameter

    if args.events <= 0:
        raise UserError(f"--events must be positive, got {args.events}")
    if args.files <= 0:
        raise UserError(f"--files must be positive, got {args.files}")
    if args.chunk <= 0:
        raise UserError(f"--chunk must be positive, got {args.chunk}")
    if args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    if args.first_event < 0:
        raise UserError(f"--first-event must be >= 0, got {args.first_event}")
    detector = detector_spec(args.detector, args.disable, args.enable,
                             **dict(parse_parameter(text) for text in args.detector_param))
    dead_map = dead_channels(args.dead_channels, run=args.run) if args.dead_channels is not None else None
    generator = EventGenerator(args.spectrum, seed=args.seed, dead_fraction=args.dead_fraction,
                               dead_map=dead_map, run=args.run, attenuation_length=args.attenuation_length,
                               detector=detector)
    start = time.perf_counter()
    paths = write_root(args.out, args.events, generator, chunk_events=args.chunk, progress=not args.no_progress,
                       compression=args.compression, files=args.files, tree=args.tree,
                       first_event=args.first_event, workers=args.threads)
    seconds = time.perf_counter() - start
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1]} ({len(paths)} files)"
    print(f"wrote {args.events} events ({generator.spectrum.name}, {detector.label} detector, seed {args.seed}, "
          f"run {args.run}, "
          f"{int(generator.dead.sum())} dead channels) to {where}: {size_mb:.1f} MB, "
          f"{args.events / seconds:.0f} events/s")
    return 0
