"""``python -m dmt.cli``: how torchrun starts every rank of a ``dmt`` job."""

from dmt.cli.main import exit_job, main

exit_job(main())
