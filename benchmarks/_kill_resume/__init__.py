"""The coordinator crash-point procedure, shared by `tests/integration/test_crash_points.py` (imported as
`benchmarks._kill_resume`) and `benchmarks/crash_points.py` (imported as `_kill_resume`): `campaign` kills and
resumes real runs, `checks` verifies what they left. Imports inside are relative, so both ways work."""

from .campaign import TARGETED, Campaign, CrashFigures, CrashPlan, KillPoint, fleet, padded_null_model, run_campaign
from .checks import Rows, RunCheck, result_rows, verify

__all__ = [
    "TARGETED",
    "Campaign",
    "CrashFigures",
    "CrashPlan",
    "KillPoint",
    "Rows",
    "RunCheck",
    "fleet",
    "padded_null_model",
    "result_rows",
    "run_campaign",
    "verify",
]
