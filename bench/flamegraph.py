#!/usr/bin/env python3
"""Folded stacks -> flame graph SVG, self-contained (standard library only),
so the suite needs no unpackaged tool.

Input: one line per distinct stack, `frame;frame;...;leaf COUNT`, root
first (the format of Brendan Gregg's stackcollapse scripts). A frame may be
written `module`function`; the module picks the colour and is left out of
the label. Output: an SVG where each frame's width is its share of the
samples; hovering shows the full name and its share.

Usage: flamegraph.py [--title T] < folded > graph.svg
"""

import argparse
import hashlib
import sys
from html import escape

WIDTH = 1200
ROW = 16
PAD = 10
FONT = 12
CHAR = 6.6  # average glyph width of a 12 px sans-serif font, for truncation
MIN_PX = 0.3  # narrower frames are not drawn (they would be invisible anyway)

# Module families and their hue ranges: leakscan warm orange, glibc red,
# the program green, the kernel blue, everything else grey-brown.
PALETTES = {
    "leakscan": (25, 45),
    "libc": (0, 12),
    "program": (90, 130),
    "kernel": (200, 230),
    "other": (40, 60),
}


def family(module):
    m = module.lower()
    if "leakscan" in m:
        return "leakscan"
    if m.startswith("libc") or m.startswith("ld-linux") or "libc.so" in m:
        return "libc"
    if "kernel" in m:
        return "kernel"
    if m in ("", "[unknown]", "[vdso]"):
        return "other"
    return "program" if ".so" not in m else "other"


def colour(module, name):
    lo, hi = PALETTES[family(module)]
    h = int(hashlib.md5(name.encode()).hexdigest()[:8], 16)
    hue = lo + h % (hi - lo + 1)
    light = 55 + (h >> 8) % 15
    return f"hsl({hue},75%,{light}%)"


class Node:
    __slots__ = ("name", "count", "children")

    def __init__(self, name):
        self.name = name
        self.count = 0
        self.children = {}


def parse(lines):
    root = Node("all")
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        root.count += n
        node = root
        for frame in stack.split(";"):
            child = node.children.get(frame)
            if child is None:
                child = node.children[frame] = Node(frame)
            child.count += n
            node = child
    return root


def depth(node):
    return 1 + max((depth(c) for c in node.children.values()), default=0)


def render(root, title):
    levels = depth(root)
    height = levels * ROW + 3 * PAD + FONT * 2
    scale = (WIDTH - 2 * PAD) / max(root.count, 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Verdana, sans-serif" font-size="{FONT}">',
        f'<rect width="100%" height="100%" fill="#f8f8f0"/>',
        f'<text x="{WIDTH / 2}" y="{PAD + FONT}" text-anchor="middle" font-size="{FONT + 3}">'
        f"{escape(title)}</text>",
    ]
    base = height - PAD  # the root sits at the bottom

    def draw(node, x, level):
        w = node.count * scale
        if w < MIN_PX:
            return
        module, sep, name = node.name.rpartition("`")
        if not sep:
            module, name = "", node.name
        y = base - (level + 1) * ROW
        share = 100.0 * node.count / max(root.count, 1)
        tip = f"{name} ({module + ', ' if module else ''}{node.count} samples, {share:.2f}%)"
        out.append(f"<g><title>{escape(tip)}</title>"
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" rx="2" '
                   f'fill="{colour(module, name) if level else "hsl(0,0%,80%)"}"/>')
        chars = int((w - 6) / CHAR)
        if chars >= 3:
            label = name if len(name) <= chars else name[:chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 4}">{escape(label)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.count * scale

    draw(root, PAD, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description="folded stacks -> flame graph SVG")
    ap.add_argument("--title", default="Flame graph")
    args = ap.parse_args()
    sys.stdout.write(render(parse(sys.stdin), args.title))


if __name__ == "__main__":
    main()
