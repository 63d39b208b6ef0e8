#!/usr/bin/env python3
"""Write the README model table from `models/*.yml` (via vimzoo.model_index()), so the table never drifts from the
metafiles the contract tests check.

The table goes between `<!-- model-table:start -->` and `<!-- model-table:end -->`; everything else in the file is
left byte-for-byte alone. `--check` writes nothing and exits 1 when the README is out of date (CI runs it).

    python tools/gen_model_table.py            # rewrite README.md
    python tools/gen_model_table.py --check    # exit 1 if README.md would change
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

START = '<!-- model-table:start -->'
END = '<!-- model-table:end -->'
REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = ['family', 'model', 'params (M)', 'top-1 (%)', 'weights', 'license', 'implementation']
ALIGN = ['---', '---', '---:', '---:', ':---:', '---', '---']


def _cell(value) -> str:
    """Markdown-safe table cell; missing values print as '-'."""
    if value is None or value == '':
        return '-'
    return str(value).replace('|', '\\|').replace('\n', ' ').strip()


def _params_m(params) -> str:
    return f'{params / 1e6:.2f}' if isinstance(params, (int, float)) else '-'


def _top1(top1) -> str:
    return str(top1) if isinstance(top1, (int, float)) else '-'  # as written in the metafile (76.1, 79.13)


def render_table(index: Dict[str, dict]) -> str:
    """Markdown table: one row per variant, families in index order, variants in metafile order."""
    lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '|'.join(ALIGN) + '|']
    for family, meta in index.items():
        name = f'[{family}]({meta["paper"]})' if meta.get('paper') else family
        for v in meta.get('variants') or []:
            row = [
                name,
                f'`{v["name"]}`',
                _params_m(v.get('params')),
                _top1(v.get('top1')),
                'yes' if v.get('weights') else 'no',
                _cell(v.get('license', meta.get('license'))),  # a variant may override the family license
                _cell(meta.get('implementation')),
            ]
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines) + '\n'


def replace_between_markers(text: str, table: str) -> str:
    """`text` with the block between the markers replaced by `table`; errors if the markers are missing/broken."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f'the file must contain exactly one of each of the markers {START!r} and {END!r}.')
    if text.index(END) < text.index(START):
        raise ValueError(f'markers out of order: {END!r} comes before {START!r}.')
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{START}\n{table}{END}{tail}'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--readme', type=Path, default=REPO_ROOT / 'README.md', help='file holding the markers')
    parser.add_argument('--check', action='store_true', help='exit 1 if the file is out of date; write nothing')
    args = parser.parse_args(argv)

    import vimzoo

    text = args.readme.read_text()
    new = replace_between_markers(text, render_table(vimzoo.model_index()))  # ValueError: missing markers
    if args.check:
        if new != text:
            print(f'{args.readme} model table is out of date; run: python tools/gen_model_table.py', file=sys.stderr)
            return 1
        print(f'{args.readme} model table is up to date')
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f'updated the model table in {args.readme}')
    else:
        print(f'{args.readme} already up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
