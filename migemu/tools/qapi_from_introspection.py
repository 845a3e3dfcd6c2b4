"""Write QAPI definitions for commands migemu answers from recorded data, taken from real
QEMU 7.2's own introspection (tools layer).

The libvirt probe commands (``query-machines``, ``qom-list-properties``, ...) are answered
from recordings (``emulator/libvirt_answers.py``); their arguments are validated and
introspected like every other command, so they need QAPI definitions that match QEMU 7.2's
exactly. This tool reads the recorded ``query-qmp-schema`` (``migemu/data/qemu-7.2/libvirt/
probe.json``), and for each command in ``COMMANDS`` writes its definition and the types it
uses into the schema module QEMU defines it in, at the place QEMU's order puts it (before
the next command of that module that follows in QEMU's order). A type that migemu already
defines with the same structure is reused; new types are named after where they are used.
Definitions it wrote are replaced when it runs again; ``--check`` writes nothing and says
whether the files are up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from migemu.qapi.introspect import query_qmp_schema
from migemu.qapi.schema import parse_modules

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "qapi" / "schema"
PROBE = Path(__file__).resolve().parents[1] / "data" / "qemu-7.2" / "libvirt" / "probe.json"
GENERATED = "generated"  # marker key on each definition this tool writes

# command -> QEMU 7.2 schema module (qapi/*.json) it is defined in
COMMANDS: dict[str, str] = {
    "query-block": "block",
    "query-named-block-nodes": "block",
    "query-chardev": "char",
    "query-tpm-models": "tpm",
    "query-tpm-types": "tpm",
    "qom-list": "qom",
    "qom-get": "qom",
    "qom-list-types": "qom",
    "qom-list-properties": "qom",
    "device-list-properties": "qdev",
    "query-cpus-fast": "machine",
    "query-machines": "machine",
    "query-target": "machine",
    "query-kvm": "machine",
    "query-hotpluggable-cpus": "machine",
    "query-cpu-model-expansion": "machine-target",
    "query-cpu-definitions": "machine-target",
    "query-iothreads": "misc",
    "query-command-line-options": "fds",  # after getfd..query-fdsets, as in misc.json
    "query-sev-capabilities": "misc-target",
    "query-sgx-capabilities": "misc-target",
}


def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in text.replace("_", "-").split("-") if p)


class _Converter:
    def __init__(self, info: list[dict[str, Any]], existing: dict[str, str]) -> None:
        self.by_name = {e["name"]: e for e in info}
        self.existing = existing  # structure key -> our type name
        self.names: dict[str, str] = {}  # masked name -> our name
        self.defs: list[dict[str, Any]] = []

    def key(self, masked: str, stack: tuple[str, ...] = ()) -> str:
        return json.dumps(_expand(self.by_name, masked, stack), sort_keys=True)

    def ref(self, masked: str, hint: str) -> Any:
        if masked.startswith("["):
            return [self.ref(masked[1:-1], hint)]
        e = self.by_name[masked]
        if e["meta-type"] == "builtin":
            return {"string": "str", "boolean": "bool", "value": "any"}.get(
                e["json-type"], e["json-type"]
            )
        if e["meta-type"] == "array":
            return [self.ref(e["element-type"], hint)]
        if masked in self.names:
            return self.names[masked]
        k = self.key(masked)
        if k in self.existing:
            self.names[masked] = self.existing[k]
            return self.existing[k]
        name = _camel(hint)
        while name in self.existing.values():
            name += "X"
        self.names[masked] = name
        self.existing[k] = name
        self.defs.append(self.define(e, name))
        return name

    def members(self, members: list[dict[str, Any]], hint: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in members:
            t = self.ref(m["type"], f"{hint}-{m['name']}")
            key = ("*" if "default" in m else "") + m["name"]
            out[key] = {"type": t, "features": m["features"]} if m.get("features") else t
        return out

    def define(self, e: dict[str, Any], name: str) -> dict[str, Any]:
        meta = e["meta-type"]
        if meta == "enum":
            data = [
                {"name": m["name"], "features": m["features"]} if m.get("features") else m["name"]
                for m in e["members"]
            ]
            return {"enum": name, "data": data, GENERATED: True}
        if meta == "alternate":
            data = {
                f"b{i}": self.ref(m["type"], f"{name}-b{i}") for i, m in enumerate(e["members"])
            }
            return {"alternate": name, "data": data, GENERATED: True}
        assert meta == "object", e
        out: dict[str, Any]
        if "tag" in e:
            out = {
                "union": name,
                "base": self.members(e["members"], name),
                "discriminator": e["tag"],
            }
            out["data"] = {
                v["case"]: self.ref(v["type"], f"{name}-{v['case']}") for v in e["variants"]
            }
        else:
            out = {"struct": name, "data": self.members(e["members"], name)}
        if e.get("features"):
            out["features"] = e["features"]
        out[GENERATED] = True
        return out

    def command(self, e: dict[str, Any]) -> list[dict[str, Any]]:
        self.defs = []
        name = e["name"]
        cmd: dict[str, Any] = {"command": name}
        arg = self.by_name[e["arg-type"]]
        if arg.get("members") or "tag" in arg:
            if "tag" in arg:
                cmd["data"] = self.ref(e["arg-type"], f"{name}-arg")
                cmd["boxed"] = True
            else:
                cmd["data"] = self.members(arg["members"], f"{name}-arg")
        ret = self.by_name.get(e["ret-type"])
        if not (
            ret and ret["meta-type"] == "object" and not ret.get("members") and "tag" not in ret
        ):
            cmd["returns"] = self.ref(e["ret-type"], f"{name}-info")
        if e.get("allow-oob"):
            cmd["allow-oob"] = True
        if e.get("features"):
            cmd["features"] = e["features"]
        cmd[GENERATED] = True
        return [*self.defs, cmd]


def _expand(info: dict[str, dict[str, Any]], name: str, stack: tuple[str, ...]) -> Any:
    if name.startswith("["):
        return [_expand(info, name[1:-1], stack)]
    e = info[name]
    meta = e["meta-type"]
    if meta == "builtin":
        return e["json-type"]
    if meta == "array":
        return [_expand(info, e["element-type"], stack)]
    if name in stack:
        return "<recursive>"
    stack = (*stack, name)
    out: dict[str, Any] = {"meta": meta}
    if meta == "enum":
        out["members"] = e["members"]
    elif meta == "alternate":
        out["members"] = [_expand(info, m["type"], stack) for m in e["members"]]
    elif meta == "object":
        out["members"] = [
            {**{k: v for k, v in m.items() if k != "type"}, "type": _expand(info, m["type"], stack)}
            for m in e["members"]
        ]
        out["features"] = e.get("features", [])
        if "tag" in e:
            out["tag"] = e["tag"]
            out["variants"] = [
                {"case": v["case"], "type": _expand(info, v["type"], stack)} for v in e["variants"]
            ]
    return out


def _load_modules() -> dict[str, list[dict[str, Any]]]:
    from migemu.qapi.schema import MODULES

    return {
        m: json.loads((SCHEMA_DIR / f"{m}.json").read_text())
        if (SCHEMA_DIR / f"{m}.json").exists()
        else []
        for m in MODULES
    }


def generate() -> dict[str, list[dict[str, Any]]]:
    """Every schema module with this tool's definitions (re)placed."""
    real = next(
        e for e in json.loads(PROBE.read_text()) if e["request"]["execute"] == "query-qmp-schema"
    )
    info: list[dict[str, Any]] = real["reply"]["return"]
    modules = {m: [d for d in defs if not d.get(GENERATED)] for m, defs in _load_modules().items()}
    ours = query_qmp_schema(parse_modules(_strip(modules)))
    ours_by_name = {e["name"]: e for e in ours}
    # structure -> our name, for every named type migemu already has
    schema = parse_modules(_strip(modules))
    existing: dict[str, str] = {}
    gen = query_qmp_schema(schema)
    from migemu.qapi import introspect

    g = introspect._Generator(schema)
    g.run()
    for our_name, masked in g.names.items():
        existing[json.dumps(_expand(ours_by_name, masked, ()), sort_keys=True)] = our_name
    del gen
    conv = _Converter(info, existing)
    real_order = [e["name"] for e in info if e["meta-type"] in ("command", "event")]
    for e in info:
        if e["meta-type"] != "command" or e["name"] not in COMMANDS:
            continue
        module = COMMANDS[e["name"]]
        defs = modules.setdefault(module, [])
        new = conv.command(e)
        later = set(real_order[real_order.index(e["name"]) + 1 :])
        at = next(
            (i for i, d in enumerate(defs) if d.get("command", d.get("event")) in later), len(defs)
        )
        defs[at:at] = new
    return modules


def _strip(modules: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        m: [{k: v for k, v in d.items() if k != GENERATED} for d in defs]
        for m, defs in modules.items()
    }


def _text(defs: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(d) for d in defs) + "\n]\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    differ = False
    for module, defs in generate().items():
        path = SCHEMA_DIR / f"{module}.json"
        if path.exists() and json.loads(path.read_text()) == defs:
            continue  # hand-written modules keep their own layout
        text = _text(defs)
        differ = True
        print(f"{path}: {'differs' if args.check else 'written'}", file=sys.stderr)
        if not args.check:
            path.write_text(text)
    return 1 if (differ and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
