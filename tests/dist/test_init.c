// SPDX-License-Identifier: MIT
/*
 * ag_dist_init_ex under mpirun (-np 2, -np 4): a rank expecting another
 * world size fails on every rank, and the process can init again, or
 * finalise.  main() starts MPI with an init that fails everywhere (every
 * rank expects far more ranks than run), so the TAP harness has MPI.
 */
#include <stdlib.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/dist.h>

#include "internal.h"
#include "tap_mpi.h"

#define TOO_MANY 1000

static int rank, world;
static int first_rc;
static char first_msg[256];

#define NO_LEAKS()                                                     \
	TAP_CHECKF(ag__live_tensors() == 0 && ag__live_nodes() == 0 && \
			   ag__live_bytes() == 0,                      \
		   "leaked %ld tensors, %ld nodes, %ld bytes",         \
		   ag__live_tensors(), ag__live_nodes(), ag__live_bytes())

/* Not initialised: rank 0 of 1, and collectives refuse without a hang. */
#define NOT_INITIALISED()                                                    \
	do {                                                                 \
		TAP_CHECK(ag_dist_rank() == 0 && ag_dist_world_size() == 1); \
		TAP_CHECK(ag_dist_barrier() == -AG_EINVAL);                  \
		TAP_CHECKF(strstr(ag_errmsg(), "call ag_dist_init() first"), \
			   "%s", ag_errmsg());                               \
	} while (0)

/* Every rank expects TOO_MANY: every rank fails, naming rank 0. */
static int test_every_rank_wrong(void)
{
	char want[128];

	snprintf(want, sizeof(want),
		 "rank 0 expects a world size of %d, but MPI runs %d ranks",
		 TOO_MANY, world);
	TAP_CHECKF(first_rc == -AG_EINVAL && strstr(first_msg, want), "%d %s",
		   first_rc, first_msg);
	NOT_INITIALISED();
	NO_LEAKS();
	return 0;
}

/*
 * Only the last rank expects one rank more: the others, which expect the
 * right size or pass 0, fail too, with the same message.
 */
static int test_one_rank_wrong_fails_everywhere(void)
{
	struct ag_dist_opts o = { .world_size = rank == world - 1 ? world + 1 :
						rank % 2	  ? 0 :
								    world };
	char want[128];

	ag_clear_error();
	TAP_CHECK(ag_dist_init_ex(NULL, NULL, &o) == -AG_EINVAL);
	snprintf(want, sizeof(want),
		 "rank %d expects a world size of %d, but MPI runs %d ranks",
		 world - 1, world + 1, world);
	TAP_CHECKF(ag_errcode() == AG_EINVAL && strstr(ag_errmsg(), want), "%s",
		   ag_errmsg());
	NOT_INITIALISED();
	NO_LEAKS();
	return 0;
}

/* A negative size on one rank is a mistake every rank reports. */
static int test_negative_size_fails_everywhere(void)
{
	struct ag_dist_opts o = { .world_size = rank == 0 ? -2 : world };

	ag_clear_error();
	TAP_CHECK(ag_dist_init_ex(NULL, NULL, &o) == -AG_EINVAL);
	TAP_CHECKF(strstr(ag_errmsg(), "rank 0 passes world_size -2"), "%s",
		   ag_errmsg());
	NOT_INITIALISED();
	return 0;
}

/*
 * After those failures init succeeds (MPI was left running), with the
 * right size on some ranks and 0 on others; a later call while
 * initialised checks its size locally and changes nothing.
 */
static int test_init_again_succeeds(void)
{
	struct ag_dist_opts o = { .world_size = rank % 2 ? 0 : world };
	struct ag_dist_opts wrong = { .world_size = world + 1 };
	int64_t n = 3;
	struct ag_tensor *t;
	char want[128];

	TAP_CHECKF(ag_dist_init_ex(NULL, NULL, &o) == 0, "%s", ag_errmsg());
	TAP_CHECK(ag_dist_rank() == rank && ag_dist_world_size() == world);
	t = ag_full(AG_F64, 1, &n, 1.0);
	TAP_CHECKF(ag_dist_all_reduce(t, AG_DIST_SUM) == 0, "%s", ag_errmsg());
	TAP_CHECK(((double *)ag_tensor_data(t))[2] == world);
	ag_tensor_put(t);
	TAP_CHECK(ag_dist_init_ex(NULL, NULL, &wrong) == -AG_EINVAL);
	snprintf(want, sizeof(want),
		 "already initialised with %d ranks, this call expects %d",
		 world, world + 1);
	TAP_CHECKF(strstr(ag_errmsg(), want), "%s", ag_errmsg());
	TAP_CHECK(ag_dist_init(NULL, NULL) == 0);
	TAP_CHECK(ag_dist_world_size() == world);
	TAP_CHECK(ag_dist_barrier() == 0);
	NO_LEAKS();
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_every_rank_wrong),
	TAP_TEST(test_one_rank_wrong_fails_everywhere),
	TAP_TEST(test_negative_size_fails_everywhere),
	TAP_TEST(test_init_again_succeeds),
	{ 0 },
};

int main(int argc, char **argv)
{
	struct ag_dist_opts o = { .world_size = TOO_MANY };
	int rc, inited = 0, finalized = 0;

	watchdog_arm("the first ag_dist_init_ex", 120);
	first_rc = ag_dist_init_ex(&argc, &argv, &o);
	watchdog_disarm();
	snprintf(first_msg, sizeof(first_msg), "%s", ag_errmsg());
	/* it started MPI, and left it running for another try */
	MPI_Initialized(&inited);
	if (!inited) {
		printf("Bail out! MPI not running after a failed init: %s\n",
		       first_msg);
		return 1;
	}
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &world);
	rc = tap_mpi_run(tests, 120);
	/* ends the MPI the first init started; then MPI cannot restart */
	if (ag_dist_finalize()) {
		printf("# rank %d: ag_dist_finalize: %s\n", rank, ag_errmsg());
		rc = 1;
	}
	MPI_Finalized(&finalized);
	if (!finalized || ag_dist_init(NULL, NULL) != -AG_EINVAL ||
	    !strstr(ag_errmsg(), "MPI was finalised already") ||
	    ag_dist_finalize() != 0) {
		printf("# rank %d: after finalize: finalized %d, %s\n", rank,
		       finalized, ag_errmsg());
		rc = 1;
	}
	return rc;
}
