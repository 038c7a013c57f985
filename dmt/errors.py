"""User-facing error types. The CLI prints any DmtError as one line and exits 2.

Library code raises these (never ``sys.exit``); internal invariants use ``assert``.
"""


class DmtError(ValueError):
    """Bad user input: data, plan, topology or arguments. The message names the problem and the fix."""


class DataFormatError(DmtError):
    """A data file that does not follow the Criteo TSV format."""


class TopologyError(DmtError):
    """A world/host layout that cannot run the requested job."""
