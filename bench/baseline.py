"""What users write today with pyfirecrest (v2 sync client): submit, poll every 10 s, print the output.

    python bench/baseline.py JOB_SCRIPT WORKING_DIR [--mode head|tail] [--interval 10]
head: each poll prints the first 100 lines of the output file; tail: prints the last 1000 lines once at the end.
Credentials from FIRECREST_URL, FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET, AUTH_TOKEN_URL, FIRECREST_SYSTEM.
Exit 0 when the job ends COMPLETED, else 1. (--interval exists only so the smoke test runs fast.)
"""
import argparse, os, time
import firecrest as fc

TERMINAL = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY")
p = argparse.ArgumentParser()
p.add_argument("script"), p.add_argument("working_dir")
p.add_argument("--mode", choices=["head", "tail"], default="head"), p.add_argument("--interval", type=float, default=10)
args = p.parse_args()
system, env = os.environ["FIRECREST_SYSTEM"], os.environ
client = fc.v2.Firecrest(env["FIRECREST_URL"], fc.ClientCredentialsAuth(
    env["FIRECREST_CLIENT_ID"], env["FIRECREST_CLIENT_SECRET"], env["AUTH_TOKEN_URL"], min_token_validity=60))
client.timeout = 30
job_id = client.submit(system, args.working_dir, script_str=open(args.script).read())["jobId"]
print(f"submitted job {job_id}", flush=True)
out, state = f"{args.working_dir}/slurm-{job_id}.out", "UNKNOWN"
while not state.startswith(TERMINAL):
    time.sleep(args.interval)
    try:
        state = client.job_info(system, job_id)[0]["status"]["state"]
        if args.mode == "head":
            print(client.head(system, out, num_lines=100)["content"], flush=True)
    except fc.FirecrestException as e:  # job not visible yet / no output file yet: try again next time
        print(f"poll failed: {e}"[:200], flush=True)
if args.mode == "tail":
    print(client.tail(system, out, num_lines=1000)["content"], flush=True)
print(f"job {job_id}: {state}", flush=True)
raise SystemExit(0 if state == "COMPLETED" else 1)
