#!/usr/bin/env node
// Mark the addon's "GLIBC_2.38 from libc.so.6" version requirement as WEAK
// (VER_FLG_WEAK in the .gnu.version_r vernaux entry).
//
// Why: the prebuilt uWebSockets.js addon asks for GLIBC_2.38 only because of
// __isoc23_sscanf / __isoc23_strtol / __isoc23_strtoul.  ld.so checks every
// (file, version) pair in .gnu.version_r against *that file* (libc.so.6) before
// resolving any symbol, so an LD_PRELOADed shim alone cannot help, and neither
// can `patchelf --clear-symbol-version` (patchelf 0.14 leaves the vernaux entry
// in place, and the load still fails with "version `GLIBC_2.38' not found").
// A weak version requirement is allowed to be missing (ld.so only mentions it
// under `ldd -v`); the three symbols, still versioned GLIBC_2.38, are then
// bound to the LD_PRELOADed isoc23 shim, whose version script exports them as
// GLIBC_2.38.
//
// Usage: node patch-addon.js FILE.node [VERSION ...]   (default: GLIBC_2.38)
// Idempotent.  Exit 0 when patched or already weak, 1 on error.
'use strict';
const fs = require('fs');

const file = process.argv[2];
const wanted = new Set(process.argv.length > 3 ? process.argv.slice(3) : ['GLIBC_2.38']);
if (!file) { console.error('usage: patch-addon.js FILE.node [VERSION ...]'); process.exit(2); }

const SHT_GNU_VERNEED = 0x6ffffffe;
const VER_FLG_WEAK = 0x2;

const buf = fs.readFileSync(file);
if (buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) {
  console.error(`${file}: not a little-endian ELF64 file`); process.exit(1);
}
const shoff = Number(buf.readBigUInt64LE(0x28));
const shentsize = buf.readUInt16LE(0x3a);
const shnum = buf.readUInt16LE(0x3c);
const sec = (i) => {
  const o = shoff + i * shentsize;
  return { type: buf.readUInt32LE(o + 4), offset: Number(buf.readBigUInt64LE(o + 0x18)),
           size: Number(buf.readBigUInt64LE(o + 0x20)), link: buf.readUInt32LE(o + 0x28),
           info: buf.readUInt32LE(o + 0x2c) };
};
const cstr = (off) => buf.toString('latin1', off, buf.indexOf(0, off));

let verneed = null;
for (let i = 0; i < shnum; i++) { const s = sec(i); if (s.type === SHT_GNU_VERNEED) { verneed = s; break; } }
if (!verneed) { console.error(`${file}: no .gnu.version_r section`); process.exit(1); }
const strtab = sec(verneed.link).offset;

let changed = 0, already = 0;
let vn = verneed.offset;
for (let n = 0; n < verneed.info; n++) {
  const cnt = buf.readUInt16LE(vn + 2);
  const vnFile = cstr(strtab + buf.readUInt32LE(vn + 4));
  let aux = vn + buf.readUInt32LE(vn + 8);
  for (let k = 0; k < cnt; k++) {
    const name = cstr(strtab + buf.readUInt32LE(aux + 8));
    if (vnFile.startsWith('libc.so') && wanted.has(name)) {
      const flags = buf.readUInt16LE(aux + 4);
      if (flags & VER_FLG_WEAK) already++;
      else { buf.writeUInt16LE(flags | VER_FLG_WEAK, aux + 4); changed++; }
    }
    aux += buf.readUInt32LE(aux + 12);
  }
  vn += buf.readUInt32LE(vn + 12);
}

if (changed) {
  const tmp = file + '.tmp-patch';
  fs.writeFileSync(tmp, buf, { mode: fs.statSync(file).mode });
  fs.renameSync(tmp, file);
  console.log(`${file}: marked ${changed} version requirement(s) weak: ${[...wanted].join(', ')}`);
} else if (already) {
  console.log(`${file}: already patched`);
} else {
  console.log(`${file}: no libc requirement on ${[...wanted].join(', ')}; nothing to do`);
}
