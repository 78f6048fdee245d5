"""YAML read strictly: numbers and booleans as YAML 1.2 reads them, duplicate keys refused.

    uv run python -c "from reslab.strict_yaml import parse_yaml; print(parse_yaml('lr: 1e-3\\nshuffle: on', 'demo'))"

PyYAML follows YAML 1.1, where ``1e-3`` is a string and ``yes``/``no``/``on``/``off`` are booleans,
and a repeated key silently keeps its last value. :func:`parse_yaml` reads config files, ``--set``
values and the experiment queue with 1.2's rules and refuses duplicates, naming the source.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from reslab.errors import ConfigError

__all__ = ["parse_yaml"]


class _Loader(yaml.SafeLoader):
    """YAML as YAML 1.2 reads it where 1.1 surprises: ``1e-3`` is a float, only true/false are
    booleans; and duplicate keys are refused (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# booleans are true/false only (YAML 1.1 also reads yes/no/on/off, so "on" would be True)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as plain data; a syntax error or duplicate key is a :class:`ConfigError` that
    names ``where`` and the position."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
