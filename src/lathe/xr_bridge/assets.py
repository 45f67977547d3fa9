"""The WebXR client's JavaScript: three.js from the npm registry, pinned by web/package-lock.json,
copied at install time (`make install` runs `npm ci` then this module) into web/vendor/, and
served from the package. Nothing is fetched from a CDN or the network at run time.

    python -m lathe.xr_bridge.assets          # vendor from web/node_modules (after `npm ci`)
    python -m lathe.xr_bridge.assets --check  # exit 1 naming what is missing
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lathe.platform.errors import LatheError

WEB = Path(__file__).resolve().parent / "web"
VENDOR = WEB / "vendor"

# Only what index.html imports (and what those files import in turn), not the whole 24 MB package.
FILES = {
    "three": [
        "LICENSE",
        "package.json",
        "build/three.module.js",
        "build/three.core.js",
        "examples/jsm/loaders/GLTFLoader.js",
        "examples/jsm/utils/BufferGeometryUtils.js",
        "examples/jsm/utils/SkeletonUtils.js",
        "examples/jsm/controls/OrbitControls.js",
        "examples/jsm/webxr/VRButton.js",
        "examples/jsm/webxr/ARButton.js",
    ],
}


def pinned_versions() -> dict[str, str]:
    """Package -> version as locked in web/package-lock.json."""
    lock = json.loads((WEB / "package-lock.json").read_text())
    return {name: lock["packages"][f"node_modules/{name}"]["version"] for name in FILES}


def missing() -> list[str]:
    """Vendored files that are absent, or whose package version differs from the lockfile."""
    out = []
    for pkg, version in pinned_versions().items():
        meta = VENDOR / pkg / "package.json"
        if meta.is_file() and json.loads(meta.read_text()).get("version") != version:
            out.append(f"vendor/{pkg} (version differs from package-lock.json's {version})")
        out += [f"vendor/{pkg}/{f}" for f in FILES[pkg] if not (VENDOR / pkg / f).is_file()]
    return out


def require() -> None:
    gone = missing()
    if gone:
        raise LatheError(f"the WebXR client's JS is not vendored ({gone[0]}); run `make install` "
                         f"(npm ci in {WEB}, then python -m lathe.xr_bridge.assets)")


def vendor(node_modules: Path = WEB / "node_modules") -> list[Path]:
    """Copy FILES from node_modules into vendor/, checking each package's version against the lock."""
    copied = []
    for pkg, version in pinned_versions().items():
        src = node_modules / pkg
        meta = src / "package.json"
        if not meta.is_file():
            raise LatheError(f"{src}: not installed; run `npm ci` in {WEB} first")
        got = json.loads(meta.read_text()).get("version")
        if got != version:
            raise LatheError(f"{src}: version {got} but package-lock.json pins {version}; run `npm ci`")
        dst_root = VENDOR / pkg
        if dst_root.exists():
            shutil.rmtree(dst_root)
        for rel in FILES[pkg]:
            dst = dst_root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst)
            copied.append(dst)
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "--check" in argv:
            require()
            print("lathe: WebXR client assets present")
            return 0
        files = vendor()
        print(f"lathe: vendored {len(files)} files ({', '.join(f'{k} {v}' for k, v in pinned_versions().items())}) "
              f"into {VENDOR}")
        return 0
    except LatheError as e:
        print(f"lathe: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
