#!/usr/bin/env python3
"""The crate's public API as a sorted list, from rustdoc's HTML.

    cargo doc --no-deps --all-features
    python3 scripts/public_api.py target/doc/tower_llm_resilience > docs/public-api.txt

Lists every public item of `all.html` (struct, enum, trait, fn, constant,
type alias), each struct's and enum's inherent methods, each trait's
methods and each enum's variants. Diff two lists to see what a change
added, removed or renamed. (cargo-public-api does this from rustdoc's JSON,
which needs a nightly toolchain; this needs only stable rustdoc.)
"""
import os, re, sys
root = sys.argv[1]
items = []
all_html = open(os.path.join(root, 'all.html')).read()
for href in sorted(set(re.findall(r'href="([^"]+\.html)"', all_html))):
    m = re.match(r'(?:(.*)/)?(struct|enum|trait|fn|constant|type|macro|static|union|traitalias)\.(\w+)\.html$', href)
    if not m: continue
    path = (m.group(1) or '').replace('/', '::')
    kind, name = m.group(2), m.group(3)
    full = f"{path}::{name}" if path else name
    items.append(f"{kind} {full}")
    if kind in ('struct', 'enum', 'trait', 'union'):
        page = open(os.path.join(root, href)).read()
        # inherent methods: between implementations-list and trait-implementations
        a = page.find('id="implementations-list"')
        b = page.find('id="trait-implementations"')
        if kind == 'trait':
            a = page.find('id="required-methods"')
            if a < 0: a = page.find('id="provided-methods"')
            b = page.find('id="implementors"')
            if b < 0: b = len(page)
        if a >= 0:
            seg = page[a: b if b > a else len(page)]
            for meth in sorted(set(re.findall(r'id="(?:method|tymethod|associatedconstant)\.(\w+)"', seg))):
                items.append(f"  {kind} {full}::{meth}")
        if kind == 'enum':
            for v in sorted(set(re.findall(r'id="variant\.(\w+)"', page))):
                items.append(f"  variant {full}::{v}")
print("\n".join(items))
