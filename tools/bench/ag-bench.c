// SPDX-License-Identifier: MIT
/*
 * ag-bench: the workloads of docs/benchmarks.md (chain, elementwise, wide,
 * mlp, cnn) and the machine limits (STREAM-style triad, 1024^3 SGEMM, and
 * wide's backward memory traffic as a bare loop), written against libag's
 * public API only.  See docs/perf.md for what each figure measures, the byte
 * counts behind the GB/s figures and the MLP step.  Each workload is a file
 * of its own (wl_*.c), listed in workloads.h; this file parses the options
 * and runs the table.
 *
 * Repetitions are interleaved: for each repetition, every selected workload
 * runs once at every thread count before the next repetition starts, so a
 * slow phase of a shared machine spreads over all figures instead of
 * hitting one.  Median, min and max are reported.
 */
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "workloads.h"

static void usage(FILE *f)
{
	fputs("usage: ag-bench [options]\n"
	      "Runs the workloads of docs/benchmarks.md with libag and prints median/min/max.\n"
	      "  --workload NAME   chain, elementwise, wide, mlp, cnn, limits (= triad + gemm\n"
	      "                    + wide-loop), triad, gemm or wide-loop; repeatable\n"
	      "                    (default: all); dist (by name only, under mpirun -np N\n"
	      "                    where built with MPI; rank 0 reports)\n"
	      "  --threads LIST    thread counts, e.g. 1 or 1,2 (default: 1 and all CPUs)\n"
	      "  --reps N          timed repetitions (default 7; 2 with --quick)\n"
	      "  --warmup N        untimed repetitions first (default 1; 0 with --quick)\n"
	      "  --json FILE       also write the figures as JSON ('-' = stdout)\n"
	      "  --trace FILE      Perfetto/Chrome trace of one wide backward (needs ag/trace.h)\n"
	      "  --quick           tiny sizes plus gradient checks (exit 1 on a mismatch)\n"
	      "  --chain-steps N   chain length (default 10000, docs/benchmarks.md): shows\n"
	      "                    how the cost per node depends on the graph's footprint\n"
	      "  --serve-threads LIST  serve: request threads (default 1,2,8,64; 1,2,8 with\n"
	      "                    --quick); the pool keeps the last --threads size\n"
	      "  --serve-requests N    serve: requests per thread (default: a budget per case)\n"
	      "  --serve-seconds S     serve: no request starts after S seconds of a case\n"
	      "                    (default 2; 0: no limit)\n"
	      "  --serve-gate N    serve: the request threads run behind an ag_gate of N\n"
	      "                    places (at most N requests at once, the others queue\n"
	      "                    in arrival order; default off)\n"
	      "  --serve-quantum US  serve: how long a thread keeps its place at the gate\n"
	      "                    before it yields to a waiter (default 1000; 0: after\n"
	      "                    every request)\n"
	      "  --serve-unpacked  serve: leave the linear weights unpacked (default:\n"
	      "                    ag_linear_prepack, as a service would)\n"
	      "  --serve-model M   serve: mlp or cnn only (default both)\n"
	      "  --serve-soak      serve: also the resident set after 10^6 requests (long)\n"
	      "  --help            this text\n",
	      f);
	fputs("workloads (serve runs only when named):\n", f);
	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
		fprintf(f, "  %-12s %s\n", workloads[i]->name,
			workloads[i]->description);
}

/* Selects the workload or group called name; -1 if there is none. */
static int select_workload(bool *sel, const char *name)
{
	int found = -1;

	for (size_t i = 0; i < ARRAY_SIZE(workload_groups); i++) {
		if (strcmp(name, workload_groups[i].name))
			continue;
		for (int j = 0; j < 4 && workload_groups[i].members[j]; j++)
			if (select_workload(sel, workload_groups[i].members[j]))
				return -1;
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++) {
		if (!strcmp(name, workloads[i]->name)) {
			sel[i] = true;
			found = 0;
		}
	}
	return found;
}

static int parse_threads(struct config *c, const char *arg)
{
	const char *p = arg;

	c->n_threads = 0;
	while (*p) {
		char *end;
		long v = strtol(p, &end, 10);

		if (end == p || v < 0 || v > 4096 ||
		    c->n_threads == MAX_THREADS)
			return -1;
		if (v == 0)
			v = sysconf(_SC_NPROCESSORS_ONLN);
		if (v > MAX_THREADS)
			v = MAX_THREADS;
		c->threads[c->n_threads++] = (int)v;
		p = end;
		if (*p == ',')
			p++;
		else if (*p)
			return -1;
	}
	return c->n_threads ? 0 : -1;
}

static int parse_serve_threads(struct config *c, const char *arg)
{
	const char *p = arg;

	c->n_serve_threads = 0;
	while (*p) {
		char *end;
		long v = strtol(p, &end, 10);

		if (end == p || v < 1 || v > MAX_THREADS ||
		    c->n_serve_threads == (int)ARRAY_SIZE(c->serve_threads))
			return -1;
		c->serve_threads[c->n_serve_threads++] = (int)v;
		p = end;
		if (*p == ',')
			p++;
		else if (*p)
			return -1;
	}
	return c->n_serve_threads ? 0 : -1;
}

/* An integer option in [lo, 1000000]; says which option was bad. */
static int parse_int(const char *opt, const char *s, int lo, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (end == s || *end || v < lo || v > 1000000) {
		fprintf(stderr, "ag-bench: bad --%s '%s'\n", opt, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "workload", required_argument, NULL, 'w' },
		{ "threads", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'r' },
		{ "warmup", required_argument, NULL, 'u' },
		{ "json", required_argument, NULL, 'j' },
		{ "trace", required_argument, NULL, 'T' },
		{ "quick", no_argument, NULL, 'q' },
		{ "chain-steps", required_argument, NULL, 'N' },
		{ "serve-threads", required_argument, NULL, 'S' },
		{ "serve-requests", required_argument, NULL, 'R' },
		{ "serve-model", required_argument, NULL, 'M' },
		{ "serve-soak", no_argument, NULL, 'K' },
		{ "serve-seconds", required_argument, NULL, 'D' },
		{ "serve-gate", required_argument, NULL, 'G' },
		{ "serve-quantum", required_argument, NULL, 'Q' },
		{ "serve-unpacked", no_argument, NULL, 'U' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config c = { .serve_seconds = 2, .serve_quantum_us = 1000 };
	struct machine mc = { 0 };
	bool sel[ARRAY_SIZE(workloads)] = { 0 }, any = false;
	void *state[ARRAY_SIZE(workloads)] = { 0 };
	const struct workload *traced = NULL;
	struct ag_generator *g;
	int reps = -1, warmup = -1, chain_steps = 0, opt, total, done = 0;
	bool tty = isatty(STDERR_FILENO);
	double t_start = bench_now();

	mc.cores = sysconf(_SC_NPROCESSORS_ONLN);
	while ((opt = getopt_long(argc, argv, "w:t:r:u:j:T:N:S:R:M:KD:G:Q:qh",
				  opts, NULL)) != -1) {
		switch (opt) {
		case 'w':
			if (select_workload(sel, optarg)) {
				fprintf(stderr,
					"ag-bench: unknown workload '%s'\n",
					optarg);
				usage(stderr);
				return 2;
			}
			break;
		case 't':
			if (parse_threads(&c, optarg)) {
				fprintf(stderr,
					"ag-bench: bad --threads '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'r':
			if (parse_int("reps", optarg, 1, &reps))
				return 2;
			break;
		case 'u':
			if (parse_int("warmup", optarg, 0, &warmup))
				return 2;
			break;
		case 'j':
			c.json_path = optarg;
			break;
		case 'T':
			c.trace_path = optarg;
			break;
		case 'q':
			c.quick = true;
			break;
		case 'N':
			if (parse_int("chain-steps", optarg, 1, &chain_steps))
				return 2;
			break;
		case 'S':
			if (parse_serve_threads(&c, optarg)) {
				fprintf(stderr,
					"ag-bench: bad --serve-threads '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'R':
			if (parse_int("serve-requests", optarg, 1,
				      &c.serve_requests))
				return 2;
			break;
		case 'M':
			if (strcmp(optarg, "mlp") && strcmp(optarg, "cnn")) {
				fprintf(stderr,
					"ag-bench: bad --serve-model '%s'\n",
					optarg);
				return 2;
			}
			c.serve_models = optarg;
			break;
		case 'K':
			c.serve_soak = true;
			break;
		case 'U':
			c.serve_unpacked = true;
			break;
		case 'G':
			if (parse_int("serve-gate", optarg, 1, &c.serve_gate))
				return 2;
			break;
		case 'Q':
			if (parse_int("serve-quantum", optarg, 0,
				      &c.serve_quantum_us))
				return 2;
			break;
		case 'D': {
			char *end;

			c.serve_seconds = strtod(optarg, &end);
			if (end == optarg || *end || !(c.serve_seconds >= 0)) {
				fprintf(stderr,
					"ag-bench: bad --serve-seconds '%s'\n",
					optarg);
				return 2;
			}
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ag-bench: unexpected argument '%s'\n",
			argv[optind]);
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
		any |= sel[i];
	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++) {
		/* serve and dist run only when named (serve in --quick too) */
		sel[i] |= !any && (!workloads[i]->only_by_name ||
				   (c.quick && workloads[i] == &wl_serve));
		if (sel[i] && workloads[i]->trace)
			traced = workloads[i];
	}
	if (!c.n_threads) {
		c.threads[c.n_threads++] = 1;
		if (mc.cores > 1)
			c.threads[c.n_threads++] = mc.cores > MAX_THREADS ?
							   MAX_THREADS :
							   (int)mc.cores;
	}
	if (!c.n_serve_threads) {
		static const int dflt[] = { 1, 2, 8, 64 };

		c.n_serve_threads = c.quick ? 3 : 4;
		memcpy(c.serve_threads, dflt, sizeof(dflt));
	}
	c.reps = reps >= 0 ? reps : c.quick ? 2 : 7;
	c.warmup = warmup >= 0 ? warmup : c.quick ? 0 : 1;
	config_sizes(&c);
	if (chain_steps)
		c.chain_n = chain_steps;

	machine_probe(&mc);
	if (c.trace_path && !HAVE_TRACE) {
		fprintf(stderr,
			"ag-bench: --trace unavailable: ag/trace.h is not in this libag build; running without a trace\n");
		c.trace_path = NULL;
	}

	g = ag_generator_new(20260101);
	if (!g)
		die("ag_generator_new: %s", ag_errmsg());
	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
		if (sel[i])
			state[i] = workloads[i]->setup(&c, g);

	if (c.quick) {
		for (int ti = 0; ti < c.n_threads; ti++) {
			int t = c.threads[ti];
			bool lib = HAVE_POOL || t == 1;

			if (lib)
				set_threads(t);
			for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
				if (sel[i] &&
				    (lib || !workloads[i]->needs_libag))
					workloads[i]->check(state[i], &c, t, g);
		}
	}

	mc.ncpu_probed = mc.cores < CPU_PROBE_MAX ? (int)mc.cores :
						    CPU_PROBE_MAX;
	cpu_speeds(mc.cpu_ns[0], mc.ncpu_probed);
	mc.main_cpu[0] = sched_getcpu();
	mc.load_start = load_avg();
	mc.cpu_s = cpu_seconds();
	mc.wall_s = bench_now();
	total = (c.warmup + c.reps) * c.n_threads;
	for (int rep = -c.warmup; rep < c.reps; rep++) {
		recording = rep >= 0;
		for (int ti = 0; ti < c.n_threads; ti++) {
			int t = c.threads[ti];
			bool lib = HAVE_POOL || t == 1;

			fprintf(stderr,
				"%s[%3d/%d] %s %d/%d, threads %d, %.0f s elapsed%s",
				tty ? "\r" : "", ++done, total,
				rep < 0 ? "warm-up" : "rep",
				rep < 0 ? rep + c.warmup + 1 : rep + 1,
				rep < 0 ? c.warmup : c.reps, t,
				bench_now() - t_start, tty ? "   " : "\n");
			if (lib)
				set_threads(t);
			for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
				if (sel[i] &&
				    (lib || !workloads[i]->needs_libag))
					workloads[i]->run(state[i], &c, t);
		}
	}
	mc.cpu_s = cpu_seconds() - mc.cpu_s;
	mc.wall_s = bench_now() - mc.wall_s;
	mc.load_end = load_avg();
	cpu_speeds(mc.cpu_ns[1], mc.ncpu_probed);
	mc.main_cpu[1] = sched_getcpu();
	if (tty)
		fputc('\n', stderr);

	if (c.trace_path && traced) {
		set_threads(c.threads[c.n_threads - 1]);
		for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
			if (workloads[i] == traced)
				traced->trace(state[i], c.trace_path);
		fprintf(stderr, "ag-bench: trace of one wide backward in %s\n",
			c.trace_path);
	} else if (c.trace_path) {
		fprintf(stderr,
			"ag-bench: --trace traces a wide backward; wide was not selected\n");
	}

	if (!bench_silent)
		print_table(&mc, &c);
	if (c.json_path && !bench_silent)
		write_json(c.json_path, &mc, &c);

	for (size_t i = 0; i < ARRAY_SIZE(workloads); i++)
		if (sel[i])
			workloads[i]->free(state[i]);
	ag_generator_free(g);
	series_free_all();

	if (check_failures) {
		fprintf(stderr, "ag-bench: %d check(s) FAILED\n",
			check_failures);
		return 1;
	}
	if (c.quick)
		fprintf(stderr, "ag-bench: all checks passed\n");
	return 0;
}
