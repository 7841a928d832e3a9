// SPDX-License-Identifier: MIT
/*
 * What ag-bench says about the machine and its figures: the CPU, the
 * BLAS, the load, each CPU's speed, and the results as a table or JSON.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <ag/version.h>

#include "common.h"

/* -------------------------------------------------------- the machine */

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];

	snprintf(buf, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *p;

		if (strncmp(line, "model name", 10))
			continue;
		p = strchr(line, ':');
		if (!p)
			break;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		p[strcspn(p, "\n")] = 0;
		snprintf(buf, len, "%s", p);
		break;
	}
	fclose(f);
}

/*
 * libag does not report its BLAS; the process is asked instead: OpenBLAS
 * exports openblas_get_config() and openblas_get_corename().
 */
static void blas_name(char *buf, size_t len)
{
	char *(*cfg)(void);
	char *(*core)(void);

	*(void **)&cfg = dlsym(RTLD_DEFAULT, "openblas_get_config");
	*(void **)&core = dlsym(RTLD_DEFAULT, "openblas_get_corename");
	if (cfg)
		snprintf(buf, len, "OpenBLAS (%s; core %s)", cfg(),
			 core ? core() : "?");
	else if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str"))
		snprintf(buf, len, "BLIS");
	else if (dlsym(RTLD_DEFAULT, "cblas_sgemm"))
		snprintf(buf, len, "CBLAS (unknown vendor)");
	else
		snprintf(buf, len, "none (libag's own GEMM loops)");
}

static long peak_rss_kib(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return -1;
	return ru.ru_maxrss;
}

/* The 1-minute load average, or -1: a busy machine explains slow figures. */
double load_avg(void)
{
	FILE *f = fopen("/proc/loadavg", "r");
	double v = -1;

	if (f) {
		if (fscanf(f, "%lf", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/*
 * How fast each CPU runs a plain C loop right now (ns per iteration, best
 * of 3; 0 where a thread could not be pinned there).  On a shared host
 * one virtual CPU can be much slower than another for minutes at a time
 * (its physical core busy with another guest), and every figure then
 * depends on which CPU each thread happened to run on.  The loop is
 * throughput-bound (independent chains, L1 loads and stores), like libag's
 * per-node code, which a latency-bound loop would not show.
 */
static void *cpu_probe(void *arg)
{
	static _Thread_local uint64_t buf[512];
	uint64_t a[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	double *best = arg;

	*best = 0;
	for (int r = 0; r < 3; r++) {
		double t = bench_now();

		for (long i = 0; i < 1000000; i++) {
			for (int k = 0; k < 8; k++) {
				a[k] = (a[k] ^ (a[k] >> 3)) +
				       buf[(i + k) & 511];
				buf[(i * 7 + k) & 511] = a[k];
			}
		}
		t = (bench_now() - t) * 1e9 / 1000000;
		if (!*best || t < *best)
			*best = t;
	}
	if (a[0] == 42)
		*best += 1e-9; /* the result is used */
	return NULL;
}

void cpu_speeds(double *ns, int n)
{
	for (int i = 0; i < n; i++) {
		pthread_attr_t attr;
		cpu_set_t set;
		pthread_t t;

		ns[i] = 0;
		CPU_ZERO(&set);
		CPU_SET(i, &set);
		if (pthread_attr_init(&attr))
			continue;
		if (!pthread_attr_setaffinity_np(&attr, sizeof(set), &set) &&
		    !pthread_create(&t, &attr, cpu_probe, &ns[i]))
			pthread_join(t, NULL);
		pthread_attr_destroy(&attr);
	}
}

static void print_cpu_speeds(const char *when, const double *ns, int n, int cpu)
{
	double fast = 0, slow = 0;

	printf("cpu speed %s: ns per iteration of a plain C loop,", when);
	for (int i = 0; i < n; i++) {
		if (ns[i] > 0)
			printf(" cpu%d %.2f", i, ns[i]);
		else
			printf(" cpu%d -", i); /* not ours to run on */
		if (ns[i] > 0 && (!fast || ns[i] < fast))
			fast = ns[i];
		if (ns[i] > slow)
			slow = ns[i];
	}
	if (fast > 0 && slow > 1.15 * fast)
		printf(" (the slowest is %.0f%% slower: a shared host; figures depend on the CPUs threads ran on, see taskset)",
		       100 * (slow / fast - 1));
	printf("; the main thread was on cpu%d\n", cpu);
}

/* CPU time used by this process so far, user + system, in seconds. */
double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

void write_json(const char *path, const struct machine *mc,
		const struct config *c)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
	char date[64];
	time_t now = time(NULL);

	if (!f)
		die("cannot write %s: %s", path, strerror(errno));
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fputs("{\n  \"machine\": {\"cpu\": ", f);
	json_str(f, mc->cpu);
	fprintf(f, ", \"cores\": %ld, \"isa\": ", mc->cores);
	json_str(f, mc->isa);
	fputs(", \"blas\": ", f);
	json_str(f, mc->blas);
	fputs(", \"libag_config\": ", f);
	json_str(f, ag_build_config());
	fputs(", \"version\": ", f);
	json_str(f, AG_BENCH_VERSION);
	for (int w = 0; w < 2; w++) {
		fprintf(f, ", \"cpu_loop_ns_%s\": [", w ? "end" : "start");
		for (int i = 0; i < mc->ncpu_probed; i++)
			fprintf(f, "%s%.3f", i ? ", " : "", mc->cpu_ns[w][i]);
		fputs("]", f);
	}
	fputs("},\n  \"run\": {\"date\": ", f);
	json_str(f, date);
	fprintf(f,
		", \"quick\": %s, \"reps\": %d, \"warmup\": %d, \"pool\": %s, \"openblas_coretype\": ",
		c->quick ? "true" : "false", c->reps, c->warmup,
		HAVE_POOL ? "true" : "false");
	json_str(f, mc->coretype ? mc->coretype : "");
	fprintf(f,
		", \"peak_rss_kib\": %ld, \"load_avg_start\": %.2f, \"load_avg_end\": %.2f, \"cpu_per_wall\": %.3f},\n  \"results\": [",
		peak_rss_kib(), mc->load_start, mc->load_end,
		mc->wall_s > 0 ? mc->cpu_s / mc->wall_s : 0);
	for (int i = 0; i < n_series; i++) {
		const struct series *s = &all_series[i];

		fputs(i ? ",\n    {" : "\n    {", f);
		fputs("\"workload\": ", f);
		json_str(f, s->workload);
		fputs(", \"case\": ", f);
		json_str(f, s->case_name);
		fprintf(f, ", \"threads\": %d, \"metric\": ", s->threads);
		json_str(f, s->metric);
		fputs(", \"unit\": ", f);
		json_str(f, s->unit);
		if (!s->n) {
			fputs(", \"median\": null, \"min\": null, \"max\": null, \"reps\": 0, \"status\": \"unavailable\", \"reason\": \"no figure recorded\"}",
			      f);
		} else {
			double med, mn, mx;

			series_stats(s, &med, &mn, &mx);
			fprintf(f,
				", \"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"reps\": %d}",
				med, mn, mx, s->n);
		}
	}
	fputs("\n  ]\n}\n", f);
	if (f != stdout)
		fclose(f);
}

void print_table(const struct machine *mc, const struct config *c)
{
	printf("ag-bench %s (libag public API)%s\n", AG_BENCH_VERSION,
	       c->quick ? "  [--quick: tiny sizes, figures not comparable]" :
			  "");
	printf("cpu:      %s, %ld logical CPUs online\n", mc->cpu, mc->cores);
	printf("AG_ISA:   %s (the path libag picked is on the libag line)\n",
	       mc->isa);
	printf("blas:     %s\n", mc->blas);
	printf("libag:    %s (AG_GEMM=%s)\n", ag_build_config(),
	       getenv("AG_GEMM") ? getenv("AG_GEMM") : "unset");
	printf("OPENBLAS_CORETYPE: %s\n",
	       mc->coretype ? mc->coretype : "unset");
	printf("threads:  ");
	for (int i = 0; i < c->n_threads; i++)
		printf("%s%d", i ? "," : "", c->threads[i]);
	if (!HAVE_POOL)
		printf(" (ag/pool.h not in this build: libag runs on 1 thread; only the triad uses more)");
	printf("\nreps:     %d after %d warm-up, interleaved across workloads and thread counts\n\n",
	       c->reps, c->warmup);
	printf("%-12s %-22s %3s %-16s %-8s %10s %10s %10s %4s\n", "workload",
	       "case", "thr", "metric", "unit", "median", "min", "max", "reps");
	for (int i = 0; i < n_series; i++) {
		const struct series *s = &all_series[i];
		double med, mn, mx;

		printf("%-12s %-22s %3d %-16s %-8s ", s->workload, s->case_name,
		       s->threads, s->metric, s->unit);
		if (!s->n) {
			printf("no figure recorded\n");
			continue;
		}
		series_stats(s, &med, &mn, &mx);
		printf("%10.4g %10.4g %10.4g %4d\n", med, mn, mx, s->n);
	}
	/*
	 * wide: backward speedup from 1 thread to each other count, beside
	 * the same for the bare loop over wide's memory (the machine's share)
	 */
	for (int i = 0; i < c->n_threads; i++) {
		int t = c->threads[i];
		double w1 = series_median("wide", "bwd_ms", 1);
		double wt = series_median("wide", "bwd_ms", t);
		double l1 = series_median("limits", "wide_loop_ms", 1);
		double lt = series_median("limits", "wide_loop_ms", t);

		if (t == 1 || w1 <= 0 || wt <= 0)
			continue;
		printf("wide backward speedup, 1 -> %d threads: %.2fx (medians)",
		       t, w1 / wt);
		if (l1 > 0 && lt > 0)
			printf("; a bare loop over the same memory: %.2fx (limits wide_loop_ms)",
			       l1 / lt);
		printf("\n");
	}
	/* mlp: its GEMMs' rate against the 1024^3 rate at the same count */
	for (int i = 0; i < n_series; i++) {
		const struct series *mg = &all_series[i];
		double gm, lm, a, b;

		if (strcmp(mg->workload, "mlp") ||
		    strcmp(mg->metric, "gemm_gflops") || !mg->n)
			continue;
		series_stats(mg, &gm, &a, &b);
		for (int j = 0; j < n_series; j++) {
			const struct series *l = &all_series[j];

			if (strcmp(l->workload, "limits") ||
			    strcmp(l->metric, "gemm_gflops") ||
			    l->threads != mg->threads || !l->n)
				continue;
			series_stats(l, &lm, &a, &b);
			printf("mlp GEMMs, %d thread(s): %.0f%% of the %s rate (medians)\n",
			       mg->threads, 100 * gm / lm, l->case_name);
		}
	}
	printf("peak RSS: %.1f MiB (getrusage; includes the triad's arrays)\n",
	       (double)peak_rss_kib() / 1024);
	print_cpu_speeds("at start", mc->cpu_ns[0], mc->ncpu_probed,
			 mc->main_cpu[0]);
	print_cpu_speeds("at end", mc->cpu_ns[1], mc->ncpu_probed,
			 mc->main_cpu[1]);
	printf("machine load: 1-min load average %.2f at start, %.2f at end on %ld CPUs; this process got %.2f CPU-s per wall-s while measuring%s\n",
	       mc->load_start, mc->load_end, mc->cores,
	       mc->wall_s > 0 ? mc->cpu_s / mc->wall_s : 0,
	       mc->load_start > (double)mc->cores ||
			       mc->load_end > (double)mc->cores ?
		       " (busy machine: figures are pessimistic)" :
		       "");
}

/* What is known of the machine before the first repetition. */
void machine_probe(struct machine *mc)
{
	cpu_model(mc->cpu, sizeof(mc->cpu));
	blas_name(mc->blas, sizeof(mc->blas));
	mc->isa = getenv("AG_ISA") ? getenv("AG_ISA") : "auto";
	mc->coretype = getenv("OPENBLAS_CORETYPE");
}
