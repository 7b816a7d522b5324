"""``geo4d verify STORE [--video ID …]``: read every chunk of every finished stage; record damage."""

from __future__ import annotations

import argparse

_HEAD = ("video", "stage", "array", "bad / total", "check", "problem")


def _row(a) -> tuple[str, ...]:
    check = "crc32c" if a.checksums else "decode only"
    return (a.video_id, a.stage, a.array, f"{a.n_bad} / {a.total}", check, a.problem())


def cmd_verify(args: argparse.Namespace) -> int:
    from storage.store import Store
    from storage.verify import STAGE_ARRAYS, verify_store

    Store(args.store, mode="r")  # one-line error for a missing or foreign store, before opening to write
    store = Store(args.store, mode="r" if args.no_record else "a")
    ids = args.video or store.video_ids()
    names = [n for paths in STAGE_ARRAYS.values() for n in paths]
    widths = [max([len(_HEAD[0])] + [len(v) for v in ids]), 7, max(map(len, names)), 11, 11]
    print("  ".join(h.ljust(w) for h, w in zip(_HEAD, widths)) + "  " + _HEAD[-1])

    def show(check) -> None:
        for a in check.arrays:
            cells = _row(a)
            print(("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]).rstrip())

    checks = verify_store(store, args.video or None, record=not args.no_record, progress=show)
    arrays = [a for c in checks for a in c.arrays]
    damaged = [c for c in checks if c.damaged]
    stages = {(a.video_id, a.stage) for a in arrays if a.damaged}
    print(f"total: {len(checks)} video(s), {len(damaged)} damaged ({len(stages)} stage(s)); "
          f"{sum(a.n_bad for a in arrays)} of {sum(a.total for a in arrays)} chunks bad")
    unsummed = sorted({a.array for a in arrays if not a.checksums})
    if unsummed:
        print(f"note: {len(unsummed)} array kind(s) carry no checksums (store format 1: {', '.join(unsummed)}): "
              "checked for presence and decodability only")
    if damaged and not args.no_record:
        print("recorded: damaged stages are marked 'damaged' (geo4d status shows them); rerun "
              "geo4d reconstruct/archive/fuse to recompute them (damaged windows only)")
    return 1 if damaged else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every chunk of every finished stage (presence, checksums, done "
                       "markers); record damage so that a rerun repairs it; exit 1 when damaged")
    p.add_argument("store", help="Zarr store path or URL to check")
    p.add_argument("--video", nargs="+", help="only these video ids")
    p.add_argument("--no-record", action="store_true", help="report only; leave the store untouched")
    p.set_defaults(func=cmd_verify)
