"""Named process exit codes of the ``dsadvise`` CLI."""

OK = 0
FAILED = 1          # a check or dry-run found problems
BAD_INPUT = 2       # invalid flags, unknown model/GPU, unreadable file
NOTHING_FITS = 3    # recommend: no configuration fits the hardware
INTERRUPTED = 130
