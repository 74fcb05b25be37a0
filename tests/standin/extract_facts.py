"""Regenerate cupy_standin/facts.json from a CuPy wheel (facts only: names and parameter names).

    pip download --no-deps cupy-cuda12x==14.2.0 -d /tmp/cupy && python3 tests/standin/extract_facts.py /tmp/cupy/*.whl

Reads the wheel's Python sources (module-level names of ``cupy``, parameters of the Python-level
functions) and the signature strings Cython embeds in ``cupy/_core/*.so`` (``ndarray`` methods,
``ufunc`` methods). Nothing is installed and no code is copied: the stand-in only needs to know
which names and keyword arguments exist.
"""
import ast
import json
import os
import re
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main(wheel: str) -> None:
    z = zipfile.ZipFile(wheel)
    srcs = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py") and n.startswith("cupy/")}
    init = ast.parse(srcs["cupy/__init__.py"])
    names, origin = set(), {}
    for node in ast.walk(init):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                names.add(a.asname or a.name)
                origin[a.asname or a.name] = (node.module, a.name)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    trees = {}

    def sig(mod, name, depth=0):
        for p in (mod.replace(".", "/") + ".py", mod.replace(".", "/") + "/__init__.py"):
            if p not in srcs:
                continue
            t = trees.setdefault(p, ast.parse(srcs[p]))
            for n in t.body:
                if isinstance(n, ast.FunctionDef) and n.name == name:
                    a = n.args
                    return {"params": [x.arg for x in a.posonlyargs + a.args], "kwonly": [x.arg for x in a.kwonlyargs],
                            "varargs": a.vararg is not None, "varkw": a.kwarg is not None}
                if isinstance(n, ast.ImportFrom) and depth < 4 and n.module and n.level == 0:
                    for al in n.names:
                        if (al.asname or al.name) == name:
                            return sig(n.module, al.name, depth + 1)
        return None

    functions = {}
    for name, (mod, orig) in origin.items():
        s = sig(mod, orig)
        if s:
            functions[name] = s
    so_sigs = {}
    for n in z.namelist():
        if n.startswith("cupy/_core/") and n.endswith(".so"):
            text = z.read(n).decode("latin-1")
            for m in re.finditer(r"(_ndarray_base|ufunc)\.([A-Za-z_]+)\(self(?:, ([^)]*))?\)", text):
                params = []
                for p in (m.group(3) or "").split(","):
                    p = p.strip().split("=")[0].strip()
                    if p and p != "*":
                        params.append(p.split()[-1].lstrip("*"))
                so_sigs.setdefault(m.group(1), {})[m.group(2)] = params
    facts = {"cupy_version": os.path.basename(wheel).split("-")[1], "names": sorted(names), "functions": functions,
             "ndarray_methods": so_sigs.get("_ndarray_base", {}), "ufunc_methods": so_sigs.get("ufunc", {})}
    with open(os.path.join(HERE, "cupy_standin", "facts.json"), "w") as f:
        json.dump(facts, f, indent=0, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
