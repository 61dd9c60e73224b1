"""Offline generator of CLEVR-format scenes: `python -m dspn_tf.data.clevr_mini`.

The command line of `dspn_tf.data.render` (the renderer), whose functions this
module also names, so `clevr_mini.generate(...)`, `clevr_mini.make_scene(...)`
and the rest keep working.
"""

import argparse

from dspn_tf.data.render import (  # noqa: F401  (the renderer's API under its historical name)
    CAMERA_LOCATION,
    COLORS,
    FOCAL_PX,
    HEIGHT,
    MARGIN,
    MATERIALS,
    MAX_OBJECTS,
    MIN_DIST,
    MIN_OBJECTS,
    MIN_PIXELS,
    RELATION_EPS,
    SHAPES,
    SIZES,
    WIDTH,
    encode_png,
    ensure_generated,
    generate,
    generate_scenes,
    generated_folder,
    make_scene,
    render_scene,
)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dspn_tf.data.clevr_mini",
        description="Render procedurally generated scenes in the CLEVR v1.0 layout.",
    )
    parser.add_argument("--out", required=True, help="parent folder of CLEVR_v1.0")
    parser.add_argument("--train", type=int, default=0, help="number of train scenes")
    parser.add_argument("--val", type=int, default=0, help="number of val scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: all CPUs); output does not depend on it"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/CLEVR_v1.0")
    args = parser.parse_args(argv)
    try:
        path = generate(
            args.out,
            num_train=args.train,
            num_val=args.val,
            seed=args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(f"wrote {args.train} train and {args.val} val scenes to {path}")


if __name__ == "__main__":
    main()
