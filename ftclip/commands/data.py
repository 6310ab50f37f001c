"""``ftclip data synth-reid|synth-iqa|synth-fewshot OUT_DIR`` and ``ftclip data check RECIPE [key=value ...]``."""

from __future__ import annotations

from ftclip.errors import FtclipError


def register(sub) -> None:
    p = sub.add_parser("data", help="generate synthetic data sets or check a recipe's data")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    reid = data_sub.add_parser("synth-reid", help="write a deterministic synthetic set in the Market-1501 layout")
    reid.add_argument("out_dir")
    reid.add_argument("--ids", type=int, default=40, help="identities per split (train and test)")
    reid.add_argument("--cameras", type=int, default=4)
    reid.add_argument("--per-camera", type=int, default=3, help="images per identity and camera")
    reid.add_argument("--seed", type=int, default=0)
    reid.add_argument("--overwrite", action="store_true")
    reid.set_defaults(func=synth_reid)

    iqa = data_sub.add_parser("synth-iqa", help="write pristine images + a graded-degradation evaluation set")
    iqa.add_argument("out_dir")
    iqa.add_argument("--seed", type=int, default=0)
    iqa.add_argument("--overwrite", action="store_true")
    iqa.set_defaults(func=synth_iqa)

    fewshot = data_sub.add_parser("synth-fewshot", help="write a deterministic few-shot classification set "
                                                        "(folder layout: train/<class>/, test/<class>/)")
    fewshot.add_argument("out_dir")
    fewshot.add_argument("--classes", type=int, default=8, help="number of classes (2..10)")
    fewshot.add_argument("--train-per-class", type=int, default=20, help="training images per class (16 shots + 4 val)")
    fewshot.add_argument("--test-per-class", type=int, default=16)
    fewshot.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("HEIGHT", "WIDTH"))
    fewshot.add_argument("--seed", type=int, default=0)
    fewshot.add_argument("--overwrite", action="store_true")
    fewshot.set_defaults(func=synth_fewshot)

    check = data_sub.add_parser("check", help="parse and decode a recipe's data set without training")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")
    check.set_defaults(func=check_data)


def synth_reid(args) -> int:
    from ftclip.tasks.reid.synthetic import write_synthetic_reid

    out = write_synthetic_reid(args.out_dir, num_ids=args.ids, num_cameras=args.cameras,
                               images_per_id_cam=args.per_camera, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a synthetic re-ID set (Market-1501 layout) to {out}")
    return 0


def synth_iqa(args) -> int:
    from ftclip.tasks.iqa.synthetic import write_synthetic_iqa

    out = write_synthetic_iqa(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a synthetic IQA set to {out}")
    return 0


def synth_fewshot(args) -> int:
    from ftclip.tasks.fewshot.synthetic import write_synthetic_fewshot

    out = write_synthetic_fewshot(args.out_dir, num_classes=args.classes, train_per_class=args.train_per_class,
                                  test_per_class=args.test_per_class, size=tuple(args.size), seed=args.seed,
                                  overwrite=args.overwrite)
    print(f"wrote a synthetic few-shot set (folder layout, {args.classes} classes) to {out}")
    return 0


def check_data(args) -> int:
    """Parse, decode every image, report counts and problems; non-zero exit on errors."""
    from ftclip.recipe import load_recipe
    from ftclip.datacheck import check_recipe_data

    cfg = load_recipe(args.recipe, list(args.overrides))
    report = check_recipe_data(cfg)
    print(report.text)
    if report.errors:
        raise FtclipError(f"data check failed: {len(report.errors)} problem(s); first: {report.errors[0]}")
    return 0
