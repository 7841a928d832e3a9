// SPDX-License-Identifier: MIT
/*
 * The Fashion-MNIST loader (examples/fmnist.c) on Debian's
 * dataset-fashion-mnist, and on small IDX files made corrupt on purpose.
 * Known values were read once with /usr/bin/python3's gzip module.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <zlib.h>

#include "common.h"
#include "fmnist.h"

static bool have_dataset(void)
{
	return !access(FMNIST_DIR "/t10k-labels-idx1-ubyte.gz", R_OK) &&
	       !access(FMNIST_DIR "/t10k-images-idx3-ubyte.gz", R_OK);
}

#define NEED_DATASET()                                                       \
	do {                                                                 \
		if (!have_dataset())                                         \
			cr_skip_test(                                        \
				"no " FMNIST_DIR                             \
				" (apt-get install dataset-fashion-mnist)"); \
	} while (0)

Test(nn_fmnist, test_set)
{
	/* t10k-labels-idx1-ubyte.gz, items 0..19 */
	static const int64_t first[20] = { 9, 2, 1, 1, 6, 1, 4, 6, 5, 7,
					   4, 5, 7, 3, 4, 1, 2, 4, 8, 0 };
	struct fmnist d;
	int64_t hist[10] = { 0 };
	double sum = 0, want;
	float top = -10;
	int at = -1;

	NEED_DATASET();
	cr_assert_eq(fmnist_load(&d, NULL, false), 0, "%s", d.errmsg);
	cr_assert_eq(d.n, 10000);
	for (int64_t i = 0; i < d.n; i++)
		hist[d.labels[i]]++;
	for (int c = 0; c < 10; c++)
		cr_assert_eq(hist[c], 1000, "class %d: %lld", c,
			     (long long)hist[c]);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(d.labels[i], first[i], "label %d", i);
	/* image 0: its pixels sum to 33456, the first 255 is pixel 577 */
	for (int i = 0; i < FMNIST_PIXELS; i++) {
		float v = d.norm[d.pixels[i]];

		sum += v;
		if (v > top) {
			top = v;
			at = i;
		}
	}
	want = (33456 / 255.0 - FMNIST_PIXELS * 0.2860) / 0.3530;
	cr_assert(fabs(sum - want) < 1e-3, "sum %g, want %g", sum, want);
	cr_assert_eq(at, 577);
	cr_assert_float_eq(top, (1 - 0.2860) / 0.3530, 1e-6);
	fmnist_free(&d);
}

static bool have_train_set(void)
{
	return !access(FMNIST_DIR "/train-labels-idx1-ubyte.gz", R_OK) &&
	       !access(FMNIST_DIR "/train-images-idx3-ubyte.gz", R_OK);
}

/* Mean of the step losses [from, from + n). */
static double mean_of(const double *l, int from, int n)
{
	double s = 0;

	for (int i = from; i < from + n; i++)
		s += l[i];
	return s / n;
}

/*
 * 120 Adam steps (batches of 64 from the first 3840 training images, two
 * epochs) of a 784-64-10 MLP: the loss falls, and the net then classifies
 * most of the first 1000 test images.
 */
Test(nn_fmnist, short_training_run)
{
	enum { STEPS = 120, BATCH = 64, WINDOW = 20 };
	struct ag_generator *g = ag_generator_new(1);
	struct fmnist train, test;
	struct ag_module *m;
	struct ag_optim *o;
	struct ag_tensor **ps;
	struct ag_tensor *x, *y;
	double losses[STEPS], first, last;
	int64_t right = 0;
	int np;

	NEED_DATASET();
	if (!have_train_set())
		cr_skip_test("no training set in " FMNIST_DIR);
	cr_assert_eq(fmnist_load(&train, NULL, true), 0, "%s", train.errmsg);
	cr_assert_eq(fmnist_load(&test, NULL, false), 0, "%s", test.errmsg);
	train.n = STEPS / 2 * BATCH;
	m = ag_sequential_new(
		(struct ag_module *[]){
			ag_flatten_new(1, -1), ag_linear_new(784, 64, true, g),
			ag_relu_new(), ag_linear_new(64, 10, true, g) },
		4);
	cr_assert_not_null(m, "%s", ag_errmsg());
	cr_assert_eq(ag_module_parameters(m, &ps, &np), 0);
	o = ag_adam_new(ps, np, 1e-3, 0.9, 0.999, 1e-8, 0);
	cr_assert_not_null(o, "%s", ag_errmsg());

	for (int step = 0; step < STEPS; step++) {
		struct ag_scope *s = ag_scope_begin();
		int64_t b = step % (STEPS / 2);
		struct ag_tensor *loss;

		if (!b)
			fmnist_shuffle(&train, g);
		cr_assert_eq(fmnist_batch(&train, b, BATCH, &x, &y), 0, "%s",
			     train.errmsg);
		loss = ag_cross_entropy(ag_module_forward(m, x), y);
		cr_assert_not_null(loss, "%s", ag_errmsg());
		cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s",
			     ag_errmsg());
		cr_assert_eq(ag_optim_step(o), 0, "%s", ag_errmsg());
		ag_optim_zero_grad(o);
		losses[step] = ag_tensor_item(loss);
		ag_scope_end(s);
	}
	first = mean_of(losses, 0, WINDOW);
	last = mean_of(losses, STEPS - WINDOW, WINDOW);
	cr_log_info("mean loss of the first %d steps %.4f, of the last %.4f",
		    WINDOW, first, last);
	cr_assert_gt(first, 1.0, "%g: the untrained net is not near ln 10",
		     first);
	cr_assert_lt(last, 0.7 * first, "loss %.4f -> %.4f", first, last);

	ag_module_eval(m);
	test.n = 1000;
	for (int64_t b = 0; b < 10; b++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *pred;

		cr_assert_eq(fmnist_batch(&test, b, 100, &x, &y), 0, "%s",
			     test.errmsg);
		pred = ag_argmax(ag_module_forward(m, x), 1, false);
		cr_assert_not_null(pred, "%s", ag_errmsg());
		for (int j = 0; j < 100; j++)
			right += ((int64_t *)ag_tensor_data(pred))[j] ==
				 ((int64_t *)ag_tensor_data(y))[j];
		ag_scope_end(s);
	}
	cr_log_info("test accuracy on 1000 images: %.3f", right / 1000.0);
	cr_assert_gt(right, 700, "%lld of 1000 test images right",
		     (long long)right);
	ag_optim_free(o);
	ag_module_put(m);
	ag_generator_free(g);
	fmnist_free(&train);
	fmnist_free(&test);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_fmnist, shuffle_and_batches)
{
	struct ag_generator *g = ag_generator_new(42);
	struct ag_tensor *x, *y;
	struct fmnist d;
	int64_t *seen, *first, moved = 0;

	NEED_DATASET();
	cr_assert_eq(fmnist_load(&d, NULL, false), 0, "%s", d.errmsg);
	seen = calloc(d.n, sizeof(*seen));
	first = malloc(d.n * sizeof(*first));
	fmnist_shuffle(&d, g);
	memcpy(first, d.order, d.n * sizeof(*first));
	for (int64_t i = 0; i < d.n; i++) {
		seen[d.order[i]]++;
		moved += d.order[i] != i;
	}
	for (int64_t i = 0; i < d.n; i++)
		cr_assert_eq(seen[i], 1, "item %lld appears %lld times",
			     (long long)i, (long long)seen[i]);
	cr_assert_gt(moved, 9900);
	/* the same seed gives the same epoch, the next epoch another */
	ag_generator_free(g);
	g = ag_generator_new(42);
	for (int64_t i = 0; i < d.n; i++)
		d.order[i] = i;
	fmnist_shuffle(&d, g);
	cr_assert(!memcmp(first, d.order, d.n * sizeof(*first)));
	fmnist_shuffle(&d, g);
	cr_assert(memcmp(first, d.order, d.n * sizeof(*first)));

	cr_assert_eq(fmnist_batches(&d, 64), 157);
	cr_assert_eq(fmnist_batch(&d, 156, 64, &x, &y), 0, "%s", d.errmsg);
	cr_assert_eq(ag_tensor_ndim(x), 4);
	cr_assert_eq(ag_tensor_shape(x)[0], 16); /* 10000 - 156 * 64 */
	cr_assert_eq(ag_tensor_shape(x)[1], 1);
	cr_assert_eq(ag_tensor_shape(x)[2], 28);
	cr_assert_eq(ag_tensor_dtype(y), AG_I64);
	cr_assert_eq(ag_tensor_shape(y)[0], 16);
	for (int k = 0; k < 16; k++) {
		int64_t s = d.order[156 * 64 + k];

		cr_assert_eq(((int64_t *)ag_tensor_data(y))[k], d.labels[s]);
		for (int p = 0; p < FMNIST_PIXELS; p++)
			cr_assert_eq(((float *)ag_tensor_data(
					     x))[k * FMNIST_PIXELS + p],
				     d.norm[d.pixels[s * FMNIST_PIXELS + p]]);
	}
	ag_tensor_put(x);
	ag_tensor_put(y);
	cr_assert_eq(fmnist_batch(&d, 157, 64, &x, &y), -1);
	cr_assert_null(x);
	cr_assert(strstr(d.errmsg, "out of range"));
	free(seen);
	free(first);
	fmnist_free(&d);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/* ---- corrupt files ---- */

static char dir[64], img[128], lab[128];

static void mkdir_tmp(void)
{
	strcpy(dir, "/tmp/ag-fmnist.XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(img, sizeof(img), "%s/img.gz", dir);
	snprintf(lab, sizeof(lab), "%s/lab.gz", dir);
}

static void rm_tmp(void)
{
	unlink(img);
	unlink(lab);
	rmdir(dir);
}

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void write_gz(const char *path, const void *buf, size_t n)
{
	gzFile f = gzopen(path, "wb");

	cr_assert_not_null(f);
	cr_assert_eq(gzwrite(f, buf, (unsigned)n), (int)n);
	cr_assert_eq(gzclose(f), Z_OK);
}

/* n images of 28x28 and m labels, valid unless changed afterwards. */
static void write_set(uint32_t n, uint32_t m, uint32_t img_magic, uint32_t side,
		      int label_value)
{
	size_t ni = 16 + (size_t)n * side * side, nl = 8 + m;
	unsigned char *bi = calloc(1, ni), *bl = calloc(1, nl);

	put_u32(bi, img_magic);
	put_u32(bi + 4, n);
	put_u32(bi + 8, side);
	put_u32(bi + 12, side);
	for (size_t i = 16; i < ni; i++)
		bi[i] = (unsigned char)i;
	put_u32(bl, 0x801);
	put_u32(bl + 4, m);
	for (uint32_t i = 0; i < m; i++)
		bl[8 + i] = (unsigned char)(label_value >= 0 ? label_value :
							       (int)(i % 10));
	write_gz(img, bi, ni);
	write_gz(lab, bl, nl);
	free(bi);
	free(bl);
}

static void assert_refused(const char *why)
{
	struct fmnist d;

	cr_assert_eq(fmnist_load_files(&d, img, lab), -1);
	cr_assert(strstr(d.errmsg, why), "\"%s\" lacks \"%s\"", d.errmsg, why);
	cr_assert_null(d.pixels);
	cr_assert_eq(d.n, 0);
}

TestSuite(nn_fmnist_corrupt, .init = mkdir_tmp, .fini = rm_tmp);

Test(nn_fmnist_corrupt, small_valid_set_loads)
{
	struct fmnist d;

	write_set(3, 3, 0x803, 28, -1);
	cr_assert_eq(fmnist_load_files(&d, img, lab), 0, "%s", d.errmsg);
	cr_assert_eq(d.n, 3);
	cr_assert_eq(d.labels[2], 2);
	/* pixel 0 of image 0 is byte 16 of the file */
	cr_assert_eq(d.pixels[0], 16);
	cr_assert_float_eq(d.norm[16], (16 / 255.0 - 0.2860) / 0.3530, 1e-6);
	fmnist_free(&d);
}

Test(nn_fmnist_corrupt, bad_headers)
{
	write_set(3, 3, 0x802, 28, -1);
	assert_refused("magic number 0x00000802, want 0x00000803");
	write_set(3, 3, 0x803, 27, -1);
	assert_refused("images are 27x27");
	write_set(3, 2, 0x803, 28, -1);
	assert_refused("3 images but 2 labels");
	write_set(3, 3, 0x803, 28, 10);
	assert_refused("label 10 of item 0");
	unlink(lab);
	assert_refused("cannot open");
}

/* Every cut of the gzip stream, and flipped bytes in it, are refused. */
Test(nn_fmnist_corrupt, truncated_and_garbled_gz)
{
	unsigned char *buf = malloc(1 << 16);
	size_t n;
	FILE *f;

	write_set(2, 2, 0x803, 28, -1);
	f = fopen(img, "rb");
	n = fread(buf, 1, 1 << 16, f);
	fclose(f);
	for (size_t len = 0; len < n; len++) {
		struct fmnist d;

		f = fopen(img, "wb");
		cr_assert_eq(fwrite(buf, 1, len, f), len);
		fclose(f);
		cr_assert_eq(fmnist_load_files(&d, img, lab), -1, "len %zu",
			     len);
	}
	/* a flipped byte in the deflate data or its CRC */
	for (size_t at = 12; at < n; at += 7) {
		struct fmnist d;

		buf[at] ^= 0x5a;
		f = fopen(img, "wb");
		cr_assert_eq(fwrite(buf, 1, n, f), n);
		fclose(f);
		cr_assert_eq(fmnist_load_files(&d, img, lab), -1, "at %zu", at);
		buf[at] ^= 0x5a;
	}
	free(buf);
}

Test(nn_fmnist_corrupt, trailing_data)
{
	unsigned char bl[8 + 4] = { 0 };

	write_set(3, 3, 0x803, 28, -1);
	put_u32(bl, 0x801);
	put_u32(bl + 4, 3);
	write_gz(lab, bl, sizeof(bl));
	assert_refused("data after the last item");
}

/*
 * The distributed sampler: 3 ranks over 7 images, shuffled with one seed
 * on each, hold ceil(7/3) = 3 images each; together every image, the two
 * of the padding wrapping around to the start of the order.
 */
Test(nn_fmnist_corrupt, shards_cover_the_epoch)
{
	int64_t count[7] = { 0 }, order0[7];
	struct fmnist d;

	write_set(7, 7, 0x803, 28, -1);
	cr_assert_eq(fmnist_load_files(&d, img, lab), 0, "%s", d.errmsg);
	cr_assert_eq(fmnist_shard(&d, 3, 3), -1);
	for (int r = 0; r < 3; r++) {
		struct ag_generator *g = ag_generator_new(11);
		struct ag_tensor *x, *y;

		for (int64_t i = 0; i < d.n; i++)
			d.order[i] = i;
		fmnist_shuffle(&d, g);
		if (r == 0)
			memcpy(order0, d.order, sizeof(order0));
		cr_assert(!memcmp(order0, d.order, sizeof(order0)));
		cr_assert_eq(fmnist_shard(&d, r, 3), 0);
		cr_assert_eq(fmnist_len(&d), 3);
		cr_assert_eq(fmnist_batches(&d, 2), 2);
		for (int b = 0; b < 2; b++) {
			cr_assert_eq(fmnist_batch(&d, b, 2, &x, &y), 0, "%s",
				     d.errmsg);
			cr_assert_eq(ag_tensor_numel(y), b ? 1 : 2);
			for (int64_t k = 0; k < ag_tensor_numel(y); k++) {
				int64_t lab = ((int64_t *)ag_tensor_data(y))[k];
				int64_t pos = (r + (2 * b + k) * 3) % 7;

				/* label i is image i's (write_set) */
				cr_assert_eq(lab, order0[pos]);
				count[lab]++;
			}
			ag_tensor_put(x);
			ag_tensor_put(y);
		}
		ag_generator_free(g);
	}
	/* 9 draws: every image once, order0[0] and order0[1] twice */
	for (int i = 0; i < 7; i++)
		cr_assert_eq(count[i], 1 + (i == order0[0]) + (i == order0[1]),
			     "image %d drawn %lld times", i,
			     (long long)count[i]);
	fmnist_free(&d);
}
