"""Modules (operations), one file per kind; importing this package registers them all in ``Op.registry``."""

from . import command, files, lines, logic, net, packages, service, users, weights  # noqa: F401  (registration)
from .base import Change, Command, Diff, NoOp, Op, OpContext  # noqa: F401
