#!/usr/bin/python3
"""Reads CRIU zdtm static tests' .desc files for scripts/zdtm.sh.

The .desc files are Python dict literals that test/zdtm.py eval()s. Here
they are parsed with ast.literal_eval, which runs no code; the one desc
that is an expression (mnt_ext_dev, a device test that zdtm.py only runs
when ZDTM_MNT_EXT_DEV is set) evaluates to {'flags': 'noauto'} in zdtm.py
without that variable, and is read as that here.

  desc.py show DIR NAME       one "key<TAB>value" line per field zdtm.sh uses
  desc.py select DIR CRIU     "RUN name" or "SKIP name: reason" for every
                              test zdtm.py -a -f ns would consider, in its
                              order and with its rules (see select()).
"""
import ast
import os
import platform
import stat
import subprocess
import sys

# test/zdtm.desc: {'dir': 'zdtm/', 'exclude': [...]}; only the static ones
# matter here.
EXCLUDE = {"route_rules", "criu-rtc.so"}
FIELDS = ("flags", "opts", "dopts", "ropts", "feature", "arch", "flavor")


def load(d, name):
    path = os.path.join(d, name + ".desc")
    if not os.access(path, os.F_OK) or os.path.getsize(path) == 0:
        return {}
    with open(path) as f:
        text = f.read()
    try:
        desc = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"flags": "noauto", "_note": "desc is an expression (needs ZDTM_MNT_EXT_DEV)"}
    if not isinstance(desc, dict):
        return {"flags": "noauto", "_note": "desc is not a dict"}
    return desc


def flag(desc, f):
    return f in desc.get("flags", "").split()


def show(d, name):
    desc = load(d, name)
    for k in FIELDS:
        v = desc.get(k, "")
        if isinstance(v, (list, tuple)):
            v = " ".join(v)
        # One line per field: values never hold newlines or tabs in CRIU's
        # descs, but make sure a line stays a line.
        print("%s\t%s" % (k, " ".join(str(v).split())))


def tests(d):
    """zdtm.py all_tests(): executable regular files, minus hooks,
    checkskips and the exclude list, sorted."""
    out = []
    mask = stat.S_IFREG | stat.S_IXUSR
    for f in os.listdir(d):
        st = os.lstat(os.path.join(d, f))
        if (st.st_mode & mask) != mask or not stat.S_ISREG(st.st_mode):
            continue
        if f.endswith(".checkskip") or f.endswith(".hook") or f in EXCLUDE:
            continue
        out.append(f)
    return sorted(out)


def select(d, criu):
    """zdtm.py run_tests() with -a -f ns as root: arch, noauto, features
    (criu check --feature), .checkskip, and the ns flavour among the
    test's flavours. Flags that only change how zdtm.py runs a test
    (excl: not in parallel; suid: stays root, as every test does here;
    crlib: an extra --libdir) do not skip it."""
    arch = platform.machine()
    features = {}
    for t in tests(d):
        desc = load(d, t)
        if desc.get("arch", arch) != arch:
            print("SKIP %s: arch %s" % (t, desc["arch"]))
            continue
        if flag(desc, "noauto"):
            print("SKIP %s: manual run only (noauto)%s" % (t, " - " + desc["_note"] if "_note" in desc else ""))
            continue
        missing = None
        for feat in desc.get("feature", "").split():
            if feat not in features:
                r = subprocess.run([criu, "check", "--feature", feat],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                features[feat] = r.returncode == 0
            if not features[feat]:
                missing = feat
                break
        if missing:
            print("SKIP %s: no %s feature" % (t, missing))
            continue
        chs = os.path.join(d, t + ".checkskip")
        if os.access(chs, os.X_OK):
            # zdtm.py runs it from test/, by its path zdtm/static/NAME.checkskip.
            r = subprocess.run([os.path.abspath(chs)], cwd=os.path.dirname(os.path.dirname(os.path.abspath(d))), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            if r.returncode != 0:
                print("SKIP %s: checkskip failed" % t)
                continue
        if "ns" not in desc.get("flavor", "h ns uns").split():
            print("SKIP %s: no ns flavor" % t)
            continue
        print("RUN %s" % t)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "show":
        show(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "select":
        select(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: desc.py show DIR NAME | select DIR CRIU")


if __name__ == "__main__":
    main()
