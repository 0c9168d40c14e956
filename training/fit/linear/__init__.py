"""Objectives that write *linear* towers (the user a pooled, linear map of the history's rows, the
item one row per item): the closed forms (EASE and SLIST in :mod:`.linear_task`, iALS in
:mod:`.factor_task`, their shared writing in :mod:`.closed_form`) and ELSA trained by mini-batches
(:mod:`.elsa_task`)."""

__all__ = ["closed_form", "elsa_task", "factor_task", "linear_task", "slist"]
