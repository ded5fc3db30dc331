"""``xecmae validate``: resolution report of a regressor checkpoint on ROOT files (JSON and PNG).

With ``--robustness``: the same events with 0, 1, 5 and 10% of the sensors dead, each way of
handling them (:mod:`xecmae.apps.robustness`), into robustness.json, robustness.md and robustness.png.
"""

from __future__ import annotations

import argparse

from xecmae.commands import add_dead_channels_option, add_input_options
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="regressor checkpoint")
    parser.add_argument("--input", required=True, nargs="+", help="ROOT file(s), globs, directories or list files")
    parser.add_argument("--output", required=True, help="folder for validation.json and the PNG figures")
    parser.add_argument("--config", default=None,
                        help="YAML whose 'validation' section sets the fiducial cuts and binning")
    parser.add_argument("--u-max", type=float, default=None, help="fiducial |u| < U cm (default 23.9)")
    parser.add_argument("--v-max", type=float, default=None, help="fiducial |v| < V cm (default 67.9)")
    parser.add_argument("--w-min", type=float, default=None, help="fiducial w >= W cm (default 0)")
    parser.add_argument("--no-classical", action="store_true",
                        help="skip the point-source fit (about 10 ms per event)")
    parser.add_argument("--calibration", default=None, nargs="+", metavar="FILE",
                        help="labelled ROOT file(s) (uvwTruth, energyTruth, timeTruth), other than the scored ones, "
                             "to calibrate the classical position, energy and time on; or a saved calibration .json. "
                             "Without it the classical energy is scaled on the scored events themselves")
    parser.add_argument("--save-calibration", default=None, metavar="FILE.json",
                        help="write the classical calibration fitted on --calibration to this JSON file")
    add_input_options(parser)
    parser.add_argument("--chunk", type=int, default=CHUNK_EVENTS, help="events read at a time")
    parser.add_argument("--batch", type=int, default=256, help="events per model call")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_dead_channels_option(parser, "channels to treat as dead besides those the input marks")
    rob = parser.add_argument_group("robustness against dead channels")
    rob.add_argument("--robustness", action="store_true",
                     help="resolution against the fraction of dead channels, per way of handling them")
    rob.add_argument("--dead-fractions", default="0,0.01,0.05,0.1", metavar="LIST",
                     help="fractions of the sensors made dead, on top of those already dead (default 0,0.01,0.05,0.1)")
    rob.add_argument("--inpainter", default=None, metavar="CKPT", help="inpainter checkpoint that fills them")
    rob.add_argument("--dead-trained", default=None, metavar="CKPT",
                     help="a regressor fine-tuned with training.dead_channels, compared in the same table")
    rob.add_argument("--dead-maps", default="clustered", choices=("clustered", "random"),
                     help="the generator's maps: whole boards and scattered channels, or scattered only")
    rob.add_argument("--dead-seed", type=int, default=0, help="seed of the dead maps (default 0)")
    rob.add_argument("--max-events", type=int, default=None, help="read at most this many events")


def _fitted(calibration, args: argparse.Namespace):
    """Fit the classical calibration on the labelled ROOT file(s) (with the checkpoint's validity rule)."""
    from xecmae.apps.classical import calibration_from
    from xecmae.apps.events import EventSource
    from xecmae.apps.trained import load_trained
    from xecmae.apps.validate import check_apart

    check_apart(calibration, EventSource(args.input))
    normalizer = load_trained(args.checkpoint, ("regressor",), "a resolution report", args.device).normalizer
    fitted = calibration_from(calibration, normalizer, args.chunk,
                              EventSource(calibration, args.tree, args.npho_branch, args.time_branch))
    if args.save_calibration:
        print(f"classical calibration written to {fitted.save(args.save_calibration)}")
    return fitted


def run(args: argparse.Namespace) -> int:
    from xecmae.apps.events import EventSource
    from xecmae.apps.validate import REPORT, validate_regressor
    from xecmae.configload import read_yaml
    from xecmae.data.deadchannels import parse_dead_channels

    config = read_yaml(args.config).get("validation", {}) if args.config else None
    dead = parse_dead_channels(args.dead_channels) if args.dead_channels is not None else None
    source = EventSource(args.input, args.tree, args.npho_branch, args.time_branch, dead=dead)
    if args.robustness:
        return run_robustness(args, source, config)
    calibration = args.calibration[0] if args.calibration and len(args.calibration) == 1 else args.calibration
    if args.save_calibration and (calibration is None or str(calibration).endswith(".json")):
        raise UserError("--save-calibration needs labelled ROOT file(s) in --calibration")
    if calibration is not None and not str(calibration).endswith(".json"):
        calibration = _fitted(calibration, args)
    result = validate_regressor(args.checkpoint, args.input, args.output, source=source, config=config,
                                cuts={"u_max": args.u_max, "v_max": args.v_max, "w_min": args.w_min},
                                chunk_events=args.chunk, batch_size=args.batch, device=args.device,
                                classical=not args.no_classical, calibration=calibration)
    model, classical = result["metrics"]["model"], result["metrics"].get("classical", {})
    print(f"{result['events']['fiducial']} of {result['events']['read']} events inside the fiducial volume")
    used = result["classical_calibration"]
    if classical and used["scored_events"]:
        print("classical estimates calibrated on the scored events themselves (energy scale; position uncalibrated):"
              " give --calibration LABELLED.root for an honest comparison")
    elif classical:
        print(f"classical estimates calibrated on {used['events']} labelled events of {used['source']}")
    for name, value in model.items():
        if "_res" in name:
            beside = f"   classical {classical[name]:.4g}" if name in classical else ""
            print(f"  {name:28s} model {value:.4g}{beside}")
    for name, value in model.items():
        if "_pull_width" in name:
            print(f"  {name:28s} {value:.3f} (1 when the sigma is right)")
    print(f"{args.output}/{REPORT} and {len(result['figures'])} figures written")
    return 0


def run_robustness(args: argparse.Namespace, source, config: dict | None) -> int:
    from xecmae.apps.robustness import robustness
    from xecmae.apps.robustness_report import markdown_table

    result = robustness(args.checkpoint, args.input, args.output, source=source, fractions=args.dead_fractions,
                        inpainter=args.inpainter, dead_trained=args.dead_trained, map_kind=args.dead_maps,
                        seed=args.dead_seed, max_events=args.max_events, config=config,
                        cuts={"u_max": args.u_max, "v_max": args.v_max, "w_min": args.w_min},
                        chunk_events=args.chunk, batch_size=args.batch, device=args.device,
                        classical=not args.no_classical)
    print(markdown_table(result), end="")
    print(f"{', '.join(result['files'])} written")
    return 0
