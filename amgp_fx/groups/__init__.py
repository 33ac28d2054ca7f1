"""Dependency groups: which tensor slices of a model must shrink and grow together."""
from amgp_fx.groups.analyze import DependencyGraph, analyze
from amgp_fx.groups.model import Group, Member, Role, UnknownOp
from amgp_fx.groups.registry import Rule, RuleRegistry, default_registry

__all__ = ["DependencyGraph", "analyze", "Group", "Member", "Role", "UnknownOp", "Rule", "RuleRegistry",
           "default_registry"]
