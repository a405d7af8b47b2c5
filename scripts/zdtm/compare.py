#!/usr/bin/python3
"""Compares two outputs of scripts/zdtm.sh (plain CRIU and phaul) as
Markdown: the counts, the pass ratio phaul/plain, the tests plain CRIU
passes and phaul fails (with phaul's reason), and the tests both fail
(with each reason on one line).

  compare.py PLAIN.txt PHAUL.txt
"""
import sys


def read(path):
    res = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("PASS "):
                res[line[5:]] = None
            elif line.startswith("FAIL "):
                name, _, why = line[5:].partition(": ")
                res[name] = why
    return res


def short(why, n=220):
    why = " ".join(why.split())
    return why if len(why) <= n else why[: n - 3] + "..."


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py PLAIN.txt PHAUL.txt")
    plain, phaul = read(sys.argv[1]), read(sys.argv[2])
    names = sorted(set(plain) | set(phaul))
    pp = sum(1 for v in plain.values() if v is None)
    hp = sum(1 for v in phaul.values() if v is None)
    print("| | tests | passed | failed |")
    print("|---|---|---|---|")
    print("| plain CRIU | %d | %d | %d |" % (len(plain), pp, len(plain) - pp))
    print("| phaul | %d | %d | %d |" % (len(phaul), hp, len(phaul) - hp))
    print()
    if pp:
        print("Pass ratio phaul/plain: %d/%d = %.1f%%" % (hp, pp, 100.0 * hp / pp))
    both_pass = [n for n in names if n in plain and n in phaul and plain[n] is None and phaul[n] is None]
    only_phaul = [n for n in names if n in plain and n in phaul and plain[n] is not None and phaul[n] is None]
    print("Passed by both: %d; by phaul only: %d (%s)" % (len(both_pass), len(only_phaul), ", ".join(only_phaul) or "-"))
    print()
    print("## Plain CRIU passes, phaul fails (%d)" % sum(
        1 for n in names if n in plain and n in phaul and plain[n] is None and phaul[n] is not None))
    print()
    for n in names:
        if n in plain and n in phaul and plain[n] is None and phaul[n] is not None:
            print("- `%s`: %s" % (n, short(phaul[n], 400)))
    print()
    both = [n for n in names if plain.get(n) is not None and phaul.get(n) is not None]
    print("## Both fail (%d)" % len(both))
    print()
    for n in both:
        if short(plain[n]) == short(phaul[n]):
            print("- `%s`: %s" % (n, short(plain[n])))
        else:
            print("- `%s`: plain: %s / phaul: %s" % (n, short(plain[n], 160), short(phaul[n], 160)))


if __name__ == "__main__":
    main()
