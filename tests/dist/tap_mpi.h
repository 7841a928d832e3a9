/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_TAP_MPI_H
#define AG_TESTS_TAP_MPI_H

/*
 * TAP for programs run under mpirun (Criterion's fork sandbox does not
 * mix with MPI).  Every rank runs every test; a test passes when it passed
 * on every rank (a MAX over the ranks' results), and rank 0 alone prints
 * the TAP lines.  Checks print "# rank R: ..." where they fail.  A rank
 * that leaves a test early while the others wait in a collective would
 * hang: the watchdog (tests/tsan/watchdog.h) bounds every test.
 */
#include <mpi.h>
#include <stdio.h>

#include "../tsan/tap.h"
#include "../tsan/watchdog.h"

#undef TAP_CHECK
#undef TAP_CHECKF

#define TAP_CHECK(cond) TAP_CHECKF(cond, "%s", "")

#define TAP_CHECKF(cond, ...)                                              \
	do {                                                               \
		if (!(cond)) {                                             \
			int r_ = 0;                                        \
			MPI_Comm_rank(MPI_COMM_WORLD, &r_);                \
			printf("# rank %d: %s:%d: check failed: %s: ", r_, \
			       __FILE__, __LINE__, #cond);                 \
			printf(__VA_ARGS__);                               \
			printf("\n");                                      \
			fflush(stdout);                                    \
			return 1;                                          \
		}                                                          \
	} while (0)

static inline int tap_mpi_run(const struct tap_test *tests, int seconds)
{
	int n = 0, failed = 0, rank = 0;

	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	while (tests[n].name)
		n++;
	if (!rank)
		printf("1..%d\n", n);
	fflush(stdout);
	for (int i = 0; i < n; i++) {
		int bad, any = 0;

		watchdog_arm(tests[i].name, seconds);
		bad = tests[i].fn() != 0;
		MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
		watchdog_disarm();
		failed += any;
		if (!rank)
			printf("%s %d - %s\n", any ? "not ok" : "ok", i + 1,
			       tests[i].name);
		fflush(stdout);
	}
	return failed ? 1 : 0;
}

#endif /* AG_TESTS_TAP_MPI_H */
