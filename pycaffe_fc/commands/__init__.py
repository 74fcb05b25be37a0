"""One module per ``fc-caffe`` subcommand: ``add_arguments(parser)`` and ``main(args) -> int``."""
