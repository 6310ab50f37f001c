"""One module per ``ftclip`` command (see ftclip/cli.py)."""


def add_checkpoint_options(parser, what: str = "use") -> None:
    """``--stage`` and ``--checkpoint`` for a command that reads a run directory: which finished stage and which of
    its checkpoints (:func:`ftclip.runs.select_checkpoint` checks both; it also refuses an unfinished run)."""
    parser.add_argument("--stage", metavar="STAGE",
                        help=f"of a run directory: {what} this finished stage (default: the finished run's last "
                             "stage; an unfinished run is refused)")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",  # ftclip.runs.CHECKPOINT_CHOICES
                        help="of a run directory: last, the stage's final weights (default); best: its best.ckpt "
                             "(kept with stages.<stage>.monitor)")
