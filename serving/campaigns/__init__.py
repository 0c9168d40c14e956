"""Campaign lists as measurable campaigns: a held-out control group chosen when the list is
written, and the campaign file that ``recsys campaign-report`` measures against the event log."""

__all__ = ["holdout"]
