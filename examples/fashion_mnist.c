// SPDX-License-Identifier: MIT
/*
 * Trains a classifier on Fashion-MNIST (Debian's dataset-fashion-mnist)
 * with libag alone, then reports the test accuracy in eval mode and saves
 * a checkpoint (the model as safetensors, the optimiser's and the lr
 * schedule's state beside it).
 *
 *   fashion_mnist [--model mlp|cnn] [--epochs N] [--batch B] [--threads T]
 *                 [--lr X] [--seed S] [--checkpoint PATH] [--resume]
 *                 [--limit N] [--data DIR] [--schedule cosine|constant]
 *                 [--stop-after N]
 *
 * mlp: 784-512-512-10, ReLU, dropout 0.2, Adam (lr 1e-3).
 * cnn: conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1,
 *      BatchNorm2d, ReLU, maxpool 2, linear 3136->128, ReLU, linear
 *      128->10; AdamW (lr 1e-3, weight decay 1e-2).
 * The lr follows a cosine from --lr to 0 over --epochs (torch's
 * CosineAnnealingLR stepped per epoch), or stays at --lr with
 * --schedule constant.
 * --limit uses the first N training and N test images (a quick run);
 * --resume continues from the checkpoint, at the epoch it stopped, with
 * the lr its schedule had there (give the same --epochs), and the
 * generators where they were, so it ends as the uninterrupted run would.
 * --stop-after N ends this run after its Nth epoch (counted from the
 * start of training), as if it were stopped there, to be resumed.
 *
 * Built as fashion_mnist_dist (with libag-dist, when MPI is found) it
 * trains data-parallel: mpirun -np N fashion_mnist_dist ... runs N ranks,
 * each on its shard of every epoch (fmnist_shard) with --batch images per
 * step, and DDP averages the gradients (docs/distributed.md).  Rank 0
 * prints, evaluates and saves; a rank uses 1 pool thread unless --threads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ag/ag.h>
#include <ag/checkpoint.h>
#include <ag/nn.h>
#include <ag/optim.h>

#include "fmnist.h"

#ifdef FMNIST_DIST
#include <ag/dist.h>
#else
/* one process: the data-parallel calls reduce to the module's own */
struct ag_ddp;
#endif

struct args {
	const char *model, *checkpoint, *data, *schedule;
	int epochs, threads, stop_after;
	int64_t batch, limit;
	double lr;
	uint64_t seed;
	bool resume;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int usage(const char *why)
{
	fprintf(stderr,
		"fashion_mnist: %s\n"
		"usage: fashion_mnist [--model mlp|cnn] [--epochs N] [--batch B] [--threads T]\n"
		"                     [--lr X] [--seed S] [--checkpoint PATH] [--resume]\n"
		"                     [--limit N] [--data DIR] [--schedule cosine|constant]\n"
		"                     [--stop-after N]\n",
		why);
	return 2;
}

static int parse(int argc, char **argv, struct args *a)
{
	*a = (struct args){ .model = "mlp",
			    .checkpoint = "fashion_mnist.safetensors",
			    .data = FMNIST_DIR,
			    .schedule = "cosine",
			    .epochs = 10,
			    .batch = 128,
			    .lr = 1e-3,
			    .seed = 1 };
	for (int i = 1; i < argc; i++) {
		const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char *end = NULL;

		if (!strcmp(k, "--resume")) {
			a->resume = true;
			continue;
		}
		if (!v)
			return usage("an option needs a value");
		i++;
		errno = 0;
		if (!strcmp(k, "--model"))
			a->model = v;
		else if (!strcmp(k, "--checkpoint"))
			a->checkpoint = v;
		else if (!strcmp(k, "--data"))
			a->data = v;
		else if (!strcmp(k, "--schedule"))
			a->schedule = v;
		else if (!strcmp(k, "--epochs"))
			a->epochs = (int)strtol(v, &end, 10);
		else if (!strcmp(k, "--stop-after"))
			a->stop_after = (int)strtol(v, &end, 10);
		else if (!strcmp(k, "--threads"))
			a->threads = (int)strtol(v, &end, 10);
		else if (!strcmp(k, "--batch"))
			a->batch = strtoll(v, &end, 10);
		else if (!strcmp(k, "--limit"))
			a->limit = strtoll(v, &end, 10);
		else if (!strcmp(k, "--seed"))
			a->seed = strtoull(v, &end, 10);
		else if (!strcmp(k, "--lr"))
			a->lr = strtod(v, &end);
		else
			return usage("unknown option");
		if (end && (*end || errno))
			return usage("a number is malformed");
	}
	if (strcmp(a->model, "mlp") && strcmp(a->model, "cnn"))
		return usage("--model is mlp or cnn");
	if (strcmp(a->schedule, "cosine") && strcmp(a->schedule, "constant"))
		return usage("--schedule is cosine or constant");
	if (a->epochs < 0 || a->batch < 1 || a->limit < 0 || a->threads < 0 ||
	    a->stop_after < 0 || !(a->lr > 0))
		return usage(
			"--epochs, --limit, --threads, --stop-after >= 0; --batch >= 1; --lr > 0");
	return 0;
}

/*
 * The generators a resumed run must continue: the shuffle's, and this
 * thread's default one, which dropout draws from.  Under MPI every rank's
 * dropout generator differs and only rank 0 saves, so there a resumed run
 * continues the data order exactly but not the dropout masks.
 */
#ifdef FMNIST_DIST
#define NRNG 1
#else
#define NRNG 2
#endif
static const char *const rng_names[2] = { "meta.rng.shuffle",
					  "meta.rng.default" };

static struct ag_generator *rng_of(struct ag_generator *shuffle, int i)
{
	return i ? ag_default_generator() : shuffle;
}

static struct ag_tensor *rng_state(struct ag_generator *g)
{
	uint64_t st[AG_GENERATOR_STATE_WORDS];
	int64_t n = AG_GENERATOR_STATE_WORDS;

	if (ag_generator_get_state(g, st))
		return NULL;
	/* the words' bits as i64, the one 64-bit integer dtype */
	return ag_from_data(AG_I64, 1, &n, st);
}

static int rng_load(struct ag_generator *g, struct ag_tensor *t)
{
	uint64_t st[AG_GENERATOR_STATE_WORDS];

	if (ag_tensor_dtype(t) != AG_I64 ||
	    ag_tensor_numel(t) != AG_GENERATOR_STATE_WORDS)
		return ag_set_error(AG_EINVAL,
				    "a generator state is %d i64 words",
				    AG_GENERATOR_STATE_WORDS);
	memcpy(st, ag_tensor_data(t), sizeof(st));
	return ag_generator_set_state(g, st);
}

/*
 * The optimiser's state, the scheduler's (if any), the generators' and
 * the next epoch, in "<checkpoint>.optim".
 */
static int save_optim(struct ag_optim *o, struct ag_lr_scheduler *sched,
		      struct ag_generator *shuffle, const char *path,
		      int next_epoch)
{
	const char *const *names, *const *snames = NULL;
	struct ag_tensor *const *ts, *const *sts = NULL;
	const char **all_names = NULL;
	struct ag_tensor **all = NULL, *ep = NULL, *rng[NRNG] = { NULL };
	int n, ns = 0, rc;
	bool made;

	rc = ag_optim_state(o, &names, &ts, &n);
	if (!rc && sched)
		rc = ag_scheduler_state(sched, &snames, &sts, &ns);
	if (rc)
		return rc;
	all_names = calloc((size_t)(n + ns) + 1 + NRNG, sizeof(*all_names));
	all = calloc((size_t)(n + ns) + 1 + NRNG, sizeof(*all));
	ep = ag_scalar(AG_I64, next_epoch);
	made = all_names && all && ep;
	for (int i = 0; i < NRNG; i++) {
		rng[i] = rng_state(rng_of(shuffle, i));
		made = made && rng[i];
	}
	rc = -AG_ENOMEM;
	if (made) {
		memcpy(all_names, names, (size_t)n * sizeof(*names));
		memcpy(all, ts, (size_t)n * sizeof(*ts));
		if (ns) {
			memcpy(all_names + n, snames,
			       (size_t)ns * sizeof(*names));
			memcpy(all + n, sts, (size_t)ns * sizeof(*ts));
		}
		all_names[n + ns] = "meta.next_epoch";
		all[n + ns] = ep;
		for (int i = 0; i < NRNG; i++) {
			all_names[n + ns + 1 + i] = rng_names[i];
			all[n + ns + 1 + i] = rng[i];
		}
		rc = ag_safetensors_save(path, all_names, all,
					 n + ns + 1 + NRNG);
	}
	ag_tensor_put(ep);
	for (int i = 0; i < NRNG; i++)
		ag_tensor_put(rng[i]);
	free(all_names);
	free(all);
	return rc;
}

/*
 * Loads what save_optim saved.  A file without the scheduler's entries
 * (from before they were saved) replays its steps up to the epoch; one
 * without the generators' leaves them seeded.
 */
static int load_optim(struct ag_optim *o, struct ag_lr_scheduler *sched,
		      struct ag_generator *shuffle, const char *path,
		      int *next_epoch)
{
	struct ag_safetensors *st = ag_safetensors_open(path);
	const char **names = NULL, **snames = NULL;
	struct ag_tensor **ts = NULL, **sts = NULL;
	int n, k = 0, ns = 0, rc = -AG_ENOMEM;

	if (!st)
		return -ag_errcode();
	n = ag_safetensors_count(st);
	names = calloc((size_t)n + 1, sizeof(*names));
	ts = calloc((size_t)n + 1, sizeof(*ts));
	snames = calloc((size_t)n + 1, sizeof(*snames));
	sts = calloc((size_t)n + 1, sizeof(*sts));
	if (!names || !ts || !snames || !sts)
		goto out;
	for (int i = 0; i < n; i++) {
		const char *name = ag_safetensors_name(st, i);
		struct ag_tensor *t = ag_safetensors_get(st, name);

		if (!t) {
			rc = -ag_errcode();
			goto out;
		}
		if (!strcmp(name, "meta.next_epoch")) {
			*next_epoch = (int)ag_tensor_item_i64(t);
			ag_tensor_put(t);
		} else if (!strncmp(name, "meta.rng.", 9)) {
			rc = 0;
			for (int r = 0; r < NRNG && !rc; r++)
				if (!strcmp(name, rng_names[r]))
					rc = rng_load(rng_of(shuffle, r), t);
			ag_tensor_put(t);
			if (rc)
				goto out;
		} else if (!strncmp(name, "scheduler.", 10)) {
			snames[ns] = name;
			sts[ns++] = t;
		} else {
			names[k] = name;
			ts[k++] = t;
		}
	}
	rc = ag_optim_load_state(o, names, ts, k);
	if (!rc && sched && ns)
		rc = ag_scheduler_load_state(sched, snames, sts, ns);
	for (int e = 0; !rc && sched && !ns && e < *next_epoch; e++)
		rc = ag_scheduler_step(sched);
out:
	for (int i = 0; i < k; i++)
		ag_tensor_put(ts[i]);
	for (int i = 0; i < ns; i++)
		ag_tensor_put(sts[i]);
	free(names);
	free(ts);
	free(snames);
	free(sts);
	ag_safetensors_close(st);
	return rc;
}

/* Accuracy over a set in eval mode, recording nothing. */
static double evaluate(struct ag_module *m, struct fmnist *d, int64_t batch)
{
	struct ag_mode prev = ag_inference_mode_enter();
	int64_t right = 0, seen = 0, nb = fmnist_batches(d, batch);

	ag_module_eval(m);
	for (int64_t i = 0; i < nb; i++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x, *y, *pred;

		if (fmnist_batch(d, i, batch, &x, &y) == 0) {
			pred = ag_argmax(ag_module_forward(m, x), 1, false);
			for (int64_t j = 0; pred && j < ag_tensor_numel(y); j++)
				right += ((int64_t *)ag_tensor_data(pred))[j] ==
					 ((int64_t *)ag_tensor_data(y))[j];
			seen += ag_tensor_numel(y);
		}
		ag_scope_end(s);
	}
	ag_mode_exit(prev);
	return seen ? (double)right / (double)seen : 0;
}

struct epoch_stats {
	double loss, acc, secs;
	int64_t seen;
};

static struct ag_tensor *forward(struct ag_module *m, struct ag_ddp *ddp,
				 struct ag_tensor *x)
{
#ifdef FMNIST_DIST
	if (ddp)
		return ag_ddp_forward(ddp, x);
#else
	(void)ddp;
#endif
	return ag_module_forward(m, x);
}

static int rank(void)
{
#ifdef FMNIST_DIST
	return ag_dist_rank();
#else
	return 0;
#endif
}

/* The epoch's loss sum, hits and images over every rank. */
static int sum_ranks(double *loss_sum, int64_t *right, int64_t *seen)
{
#ifdef FMNIST_DIST
	int64_t n = 3;
	struct ag_tensor *t = ag_zeros(AG_F64, 1, &n);
	double *v = t ? ag_tensor_data(t) : NULL;
	int rc;

	if (!t)
		return -ag_errcode();
	v[0] = *loss_sum;
	v[1] = (double)*right;
	v[2] = (double)*seen;
	rc = ag_dist_all_reduce(t, AG_DIST_SUM);
	*loss_sum = v[0];
	*right = (int64_t)v[1];
	*seen = (int64_t)v[2];
	ag_tensor_put(t);
	return rc;
#else
	(void)loss_sum;
	(void)right;
	(void)seen;
	return 0;
#endif
}

static int train_epoch(struct ag_module *m, struct ag_ddp *ddp,
		       struct ag_optim *o, struct fmnist *d,
		       const struct args *a, struct ag_generator *g,
		       struct epoch_stats *es)
{
	int64_t nb = fmnist_batches(d, a->batch), right = 0;
	double t0 = now(), loss_sum = 0;

	*es = (struct epoch_stats){ 0 };
	ag_module_train(m, true);
	fmnist_shuffle(d, g);
	for (int64_t i = 0; i < nb; i++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x, *y, *logits, *loss, *pred;
		int rc = -1;

		if (fmnist_batch(d, i, a->batch, &x, &y)) {
			fprintf(stderr, "fashion_mnist: %s\n", d->errmsg);
			ag_scope_end(s);
			return -1;
		}
		logits = forward(m, ddp, x);
		loss = ag_cross_entropy(logits, y);
		if (loss && !ag_backward(loss, NULL, NULL))
			rc = ag_optim_step(o);
		if (!rc) {
			ag_optim_zero_grad(o);
			loss_sum += ag_tensor_item(loss) *
				    (double)ag_tensor_numel(y);
			pred = ag_argmax(logits, 1, false);
			for (int64_t j = 0; pred && j < ag_tensor_numel(y); j++)
				right += ((int64_t *)ag_tensor_data(pred))[j] ==
					 ((int64_t *)ag_tensor_data(y))[j];
			es->seen += ag_tensor_numel(y);
		}
		ag_scope_end(s); /* x, y and the step's graph */
		if (rc) {
			fprintf(stderr, "fashion_mnist: step %lld: %s\n",
				(long long)i, ag_errmsg());
			return -1;
		}
	}
	if (sum_ranks(&loss_sum, &right, &es->seen)) {
		fprintf(stderr, "fashion_mnist: %s\n", ag_errmsg());
		return -1;
	}
	es->secs = now() - t0;
	es->loss = es->seen ? loss_sum / (double)es->seen : 0;
	es->acc = es->seen ? (double)right / (double)es->seen : 0;
	return 0;
}

static struct ag_optim *make_optim(struct ag_module *m, const struct args *a)
{
	struct ag_tensor **p;
	int n;

	if (ag_module_parameters(m, &p, &n))
		return NULL;
	if (!strcmp(a->model, "mlp"))
		return ag_adam_new(p, n, a->lr, 0.9, 0.999, 1e-8, 0);
	return ag_adamw_new(p, n, a->lr, 0.9, 0.999, 1e-8, 1e-2);
}

int main(int argc, char **argv)
{
	struct fmnist train = { 0 }, test = { 0 };
	struct ag_module *m = NULL;
	struct ag_optim *o = NULL;
	struct ag_generator *g = NULL;
	struct ag_ddp *ddp = NULL;
	struct ag_lr_scheduler *sched = NULL;
	char optim_path[4096];
	struct args a;
	int rc, first = 0, last;

#ifdef FMNIST_DIST
	if (ag_dist_init(&argc, &argv)) {
		fprintf(stderr, "fashion_mnist: %s\n", ag_errmsg());
		return 1;
	}
#endif
	rc = parse(argc, argv, &a);
	if (rc)
		goto out;
#ifdef FMNIST_DIST
	/* N ranks on a machine: a thread each, not N pools of every core */
	if (!a.threads)
		a.threads = 1;
#endif
	snprintf(optim_path, sizeof(optim_path), "%s.optim", a.checkpoint);
	rc = 1;
	if (a.threads && ag_set_num_threads(a.threads)) {
		fprintf(stderr, "fashion_mnist: %s\n", ag_errmsg());
		goto out;
	}
	if (fmnist_load(&train, a.data, true) ||
	    fmnist_load(&test, a.data, false)) {
		fprintf(stderr, "fashion_mnist: %s%s\n",
			train.errmsg[0] ? train.errmsg : test.errmsg,
			"\n(apt-get install dataset-fashion-mnist, or --data DIR)");
		rc = 1;
		goto out;
	}
	if (a.limit && a.limit < train.n)
		train.n = a.limit;
	if (a.limit && a.limit < test.n)
		test.n = a.limit;
	/* the model from one seed everywhere, dropout differs per rank */
	ag_manual_seed(a.seed + (uint64_t)rank());
	g = ag_generator_new(a.seed);
	m = g ? fmnist_model(a.model, g) : NULL;
	o = m ? make_optim(m, &a) : NULL;
	/* made before a resume, which loads its state (and the lr) */
	if (o && !strcmp(a.schedule, "cosine"))
		sched = ag_cosine_lr_new(o, a.epochs > 0 ? a.epochs : 1, 0);
	rc = 1;
	if (!o || (!strcmp(a.schedule, "cosine") && !sched)) {
		fprintf(stderr, "fashion_mnist: %s\n", ag_errmsg());
		goto out;
	}
	if (a.resume && (ag_module_load(m, a.checkpoint) ||
			 load_optim(o, sched, g, optim_path, &first))) {
		fprintf(stderr, "fashion_mnist: --resume: %s\n", ag_errmsg());
		goto out;
	}
#ifdef FMNIST_DIST
	ddp = ag_ddp_new(m, NULL);
	if (!ddp ||
	    fmnist_shard(&train, ag_dist_rank(), ag_dist_world_size())) {
		fprintf(stderr, "fashion_mnist: %s\n",
			ddp ? train.errmsg : ag_errmsg());
		goto out;
	}
	if (!rank())
		printf("%d ranks, each: ", ag_dist_world_size());
#endif
	if (!rank())
		printf("%s on %lld training images, batch %lld, %d thread(s)%s\n",
		       a.model, (long long)fmnist_len(&train),
		       (long long)a.batch, ag_get_num_threads(),
		       first ? " (resumed)" : "");
	last = a.stop_after && a.stop_after < a.epochs ? a.stop_after :
							 a.epochs;
	for (int e = first; e < last; e++) {
		struct epoch_stats es;
		double lr = ag_optim_get_lr(o);

		if (train_epoch(m, ddp, o, &train, &a, g, &es))
			goto out;
		if (sched && ag_scheduler_step(sched)) {
			fprintf(stderr, "fashion_mnist: %s\n", ag_errmsg());
			goto out;
		}
		if (rank())
			continue;
		printf("epoch %2d/%d  lr %.2e  loss %.4f  train acc %.4f  %6.0f images/s  %5.1f s  ~%.0f s left\n",
		       e + 1, a.epochs, lr, es.loss, es.acc, es.seen / es.secs,
		       es.secs, es.secs * (a.epochs - e - 1));
		fflush(stdout);
		if (ag_module_save(m, a.checkpoint) ||
		    save_optim(o, sched, g, optim_path, e + 1)) {
			fprintf(stderr, "fashion_mnist: saving: %s\n",
				ag_errmsg());
			goto out;
		}
	}
	if (!rank()) {
		printf("test accuracy %.4f (eval mode, %lld images)\n",
		       evaluate(m, &test, 1000), (long long)test.n);
		printf("checkpoint: %s (optimiser: %s)\n", a.checkpoint,
		       optim_path);
	}
	rc = 0;
out:
#ifdef FMNIST_DIST
	ag_ddp_free(ddp);
#endif
	ag_scheduler_free(sched);
	ag_optim_free(o);
	ag_module_put(m);
	ag_generator_free(g);
	fmnist_free(&train);
	fmnist_free(&test);
#ifdef FMNIST_DIST
	ag_dist_finalize();
#endif
	return rc;
}
