import { test } from "uvu";
import * as assert from "uvu/assert";
import { mappingFields, parseSmapsFields } from "../../engine/stats";

const smaps = `55d0c0000000-55d0d0000000 rw-p 00000000 00:1a 1234   /dev/shm/forkvm-x/templates-t.mem
Size:             262144 kB
Rss:               40000 kB
Pss:                4000 kB
Anonymous:          1000 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 500 kB
Anonymous:           500 kB
`;

test("fields of one mapping are summed for that file only", () => {
  const f = mappingFields(smaps, "/dev/shm/forkvm-x/templates-t.mem");
  assert.is(f.Rss, 40000);
  assert.is(f.Anonymous, 1000);
});

test("rollup fields are parsed", () => {
  const f = parseSmapsFields("Rss: 10 kB\nPss: 4 kB\nPrivate_Dirty: 3 kB\n");
  assert.equal(f, { Rss: 10, Pss: 4, Private_Dirty: 3 });
});

test.run();
