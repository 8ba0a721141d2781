# Single-steps the guest under gdb and records every instruction's address
# and CR3, so one operation's instructions can be attributed to functions
# (under -icount each step is one retired instruction; a `rep` iteration
# counts as one, as icount counts it). Run by profile.sh; settings come from
# the environment:
#   PROF_ARM     address to pass first (e.g. a kernel function only the
#                benchmark phase reaches), or empty
#   PROF_AT      address where recording starts
#   PROF_IGNORE  hits of PROF_AT to skip first (to reach steady state)
#   PROF_STEPS   instructions to record
#   PROF_OUT     output file ("pc cr3" per line)
import os
import gdb

env = os.environ
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote localhost:%s" % env.get("PROF_PORT", "1234"))
if env.get("PROF_ARM"):
    gdb.execute("hbreak *%s" % env["PROF_ARM"])
    gdb.execute("continue")
    gdb.execute("delete")
gdb.execute("hbreak *%s" % env["PROF_AT"])
bp = gdb.breakpoints()[-1]
bp.ignore_count = int(env.get("PROF_IGNORE", "0"))
gdb.execute("continue")
gdb.execute("delete")
with open(env.get("PROF_OUT", "pcs.txt"), "w") as out:
    for _ in range(int(env.get("PROF_STEPS", "20000"))):
        pc = int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFFFFFFFFFF
        cr3 = int(gdb.parse_and_eval("$cr3")) & 0xFFFFFFFFFFFFFFFF
        out.write("%x %x\n" % (pc, cr3))
        gdb.execute("stepi", to_string=True)
gdb.execute("kill")
