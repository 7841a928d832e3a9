// SPDX-License-Identifier: MIT
/*
 * safetensors files: round trips, the committed fixtures
 * (tests/nn/gen_safetensors.py), every corruption open must refuse, and
 * saves that fail without harming the file they would have replaced.
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ag/checkpoint.h>

#include "common.h"
#include "tmpdir.h"

#ifndef FIXTURE_DIR
#error "FIXTURE_DIR names tests/nn/data"
#endif

static void mkdir_tmp(void)
{
	tmpdir_make("/tmp/ag-ckpt.XXXXXX");
}

TestSuite(nn_checkpoint, .init = mkdir_tmp, .fini = tmpdir_remove);

static void *read_file(const char *p, size_t *n)
{
	FILE *f = fopen(p, "rb");
	char *buf;
	long len;

	cr_assert_not_null(f, "%s", p);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(len + 1);
	cr_assert_eq(fread(buf, 1, len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return buf;
}

static void write_file(const char *p, const void *buf, size_t n)
{
	FILE *f = fopen(p, "wb");

	cr_assert_not_null(f);
	cr_assert_eq(fwrite(buf, 1, n, f), n);
	cr_assert_eq(fclose(f), 0);
}

/* The dense bytes of t, which must equal want. */
static void assert_bytes(struct ag_tensor *t, const void *want, size_t n)
{
	unsigned char *got = malloc(n + 1);

	cr_assert_eq(ag_tensor_copy_to(t, got, n), 0, "%s", ag_errmsg());
	cr_assert(!memcmp(got, want, n));
	free(got);
}

static void assert_same(struct ag_tensor *a, struct ag_tensor *b)
{
	size_t n = ag_tensor_numel(a) * ag_dtype_size(ag_tensor_dtype(a));
	unsigned char *pa = malloc(n + 1);

	cr_assert_eq(ag_tensor_dtype(a), ag_tensor_dtype(b));
	cr_assert_eq(ag_tensor_ndim(a), ag_tensor_ndim(b));
	for (int d = 0; d < ag_tensor_ndim(a); d++)
		cr_assert_eq(ag_tensor_shape(a)[d], ag_tensor_shape(b)[d]);
	cr_assert_eq(ag_tensor_copy_to(a, pa, n), 0);
	assert_bytes(b, pa, n);
	free(pa);
}

Test(nn_checkpoint, round_trip_is_bitwise)
{
	/* NaN payloads, -0, denormals, i64 extremes survive bit for bit */
	uint32_t f32[6] = { 0x7fc00123, 0x80000000, 0x00000001,
			    0x3f800000, 0xff800000, 0x12345678 };
	uint64_t f64[3] = { 0x7ff8000000000abcull, 0x8000000000000000ull,
			    0x0000000000000001ull };
	int64_t i64[4] = { INT64_MIN, INT64_MAX, -1, 0 };
	int64_t s23[] = { 2, 3 }, s3[] = { 3 }, s22[] = { 2, 2 },
		s03[] = { 0, 3 }, s20[] = { 2, 0 };
	struct ag_tensor *base = ag_from_data(AG_F32, 2, s23, f32);
	struct ag_tensor *tr = ag_transpose(base, 0, 1);
	struct ag_tensor *ts[] = {
		base,
		ag_from_data(AG_F64, 1, s3, f64),
		ag_from_data(AG_I64, 2, s22, i64),
		ag_scalar(AG_F64, -3.5),
		ag_scalar(AG_I64, 42),
		ag_zeros(AG_F32, 2, s03),
		ag_zeros(AG_I64, 2, s20),
		tr, /* strided: written dense */
		ag_slice(tr, 0, 1, 3, 1),
	};
	const char *names[] = { "f32",	  "f64",	"i64",
				"zero_d", "zero_d_i64", "empty",
				"empty2", "strided",	"strided.slice" };
	int n = sizeof(ts) / sizeof(ts[0]);
	struct ag_safetensors *st;

	cr_assert_eq(ag_safetensors_save(path_in("a.safetensors"), names, ts,
					 n),
		     0, "%s", ag_errmsg());
	st = ag_safetensors_open(path_in("a.safetensors"));
	cr_assert_not_null(st, "%s", ag_errmsg());
	cr_assert_eq(ag_safetensors_count(st), n);
	for (int i = 0; i < n; i++) {
		struct ag_tensor *t = ag_safetensors_get(st, names[i]);

		cr_assert_not_null(t, "%s: %s", names[i], ag_errmsg());
		cr_assert(ag_tensor_is_contiguous(t));
		assert_same(ts[i], t);
		ag_tensor_put(t);
	}
	/*
	 * written largest dtype rank first (I64, F64, F32), then by name;
	 * listed by offset, so the empty "empty2" comes before "i64"
	 */
	cr_assert_str_eq(ag_safetensors_name(st, 0), "empty2");
	cr_assert_str_eq(ag_safetensors_name(st, 1), "i64");
	cr_assert_str_eq(ag_safetensors_name(st, 2), "zero_d_i64");
	cr_assert_str_eq(ag_safetensors_name(st, 3), "f64");
	cr_assert_str_eq(ag_safetensors_name(st, n - 1), "strided.slice");
	cr_assert_null(ag_safetensors_get(st, "nope"));
	AG_ASSERT_ERR(AG_EINVAL, "'nope'");
	cr_assert_null(ag_safetensors_name(st, n));
	AG_ASSERT_ERR(AG_EINVAL, "out of range");
	ag_safetensors_close(st);
	for (int i = 0; i < n; i++)
		ag_tensor_put(ts[i]);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_checkpoint, header_is_padded_to_8)
{
	struct ag_tensor *t = ag_scalar(AG_F32, 1);
	const char *names[] = { "abc" };
	unsigned char *buf;
	uint64_t hlen = 0;
	size_t n;

	cr_assert_eq(ag_safetensors_save(path_in("p"), names, &t, 1), 0);
	buf = read_file(path_in("p"), &n);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | buf[i];
	cr_assert_eq(hlen % 8, 0);
	cr_assert_eq(n, 8 + hlen + 4);
	cr_assert_eq(buf[8], '{');
	cr_assert_eq(buf[8 + hlen - 1], ' ');
	free(buf);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

/* Tensors made by torch (gen_safetensors.py), values by hand. */
Test(nn_checkpoint, torch_fixture)
{
	const char *order[] = { "steps", "bias", "alpha.x", "empty", "weight" };
	float w[6] = { -1, -0.5f, 0, 0.5f, 1, 1.5f }, a = 0.1f;
	double b[2] = { 1.5, -2.25 };
	int64_t steps = 7, s23[] = { 2, 3 }, s03[] = { 0, 3 }, s2[] = { 2 },
		s1[] = { 1 };
	struct ag_safetensors *st =
		ag_safetensors_open(FIXTURE_DIR "/torch.safetensors");
	struct ag_tensor *ts[5];
	unsigned char *want, *got;
	size_t nw, ng;

	cr_assert_not_null(st, "%s", ag_errmsg());
	cr_assert_eq(ag_safetensors_count(st), 5);
	for (int i = 0; i < 5; i++)
		cr_assert_str_eq(ag_safetensors_name(st, i), order[i]);
	cr_assert_null(ag_safetensors_metadata(st, "format"));
	for (int i = 0; i < 5; i++) {
		ts[i] = ag_safetensors_get(st, order[i]);
		cr_assert_not_null(ts[i], "%s", ag_errmsg());
	}
	cr_assert_eq(ag_tensor_ndim(ts[0]), 0);
	cr_assert_eq(ag_tensor_dtype(ts[0]), AG_I64);
	assert_bytes(ts[0], &steps, 8);
	cr_assert_eq(ag_tensor_dtype(ts[1]), AG_F64);
	cr_assert_eq(ag_tensor_shape(ts[1])[0], s2[0]);
	assert_bytes(ts[1], b, sizeof(b));
	cr_assert_eq(ag_tensor_shape(ts[2])[0], s1[0]);
	assert_bytes(ts[2], &a, 4);
	cr_assert_eq(ag_tensor_shape(ts[3])[0], s03[0]);
	cr_assert_eq(ag_tensor_shape(ts[3])[1], s03[1]);
	cr_assert_eq(ag_tensor_dtype(ts[4]), AG_F32);
	cr_assert_eq(ag_tensor_shape(ts[4])[0], s23[0]);
	cr_assert_eq(ag_tensor_shape(ts[4])[1], s23[1]);
	assert_bytes(ts[4], w, sizeof(w));

	/* the same tensors saved by libag give the very same file */
	cr_assert_eq(ag_safetensors_save(path_in("t"), order, ts, 5), 0, "%s",
		     ag_errmsg());
	want = read_file(FIXTURE_DIR "/torch.safetensors", &nw);
	got = read_file(path_in("t"), &ng);
	cr_assert_eq(ng, nw);
	cr_assert(!memcmp(got, want, nw));
	free(want);
	free(got);
	for (int i = 0; i < 5; i++)
		ag_tensor_put(ts[i]);
	ag_safetensors_close(st);
	AG_ASSERT_NO_LEAKS();
}

/* Metadata, header keys out of data order, a dtype libag lacks. */
Test(nn_checkpoint, plain_fixture)
{
	struct ag_safetensors *st =
		ag_safetensors_open(FIXTURE_DIR "/plain.safetensors");
	int64_t a[4] = { 1, -2, 3, (int64_t)1 << 40 };
	double b[2] = { 0.25, -8.0 };
	const int64_t *shape;
	enum ag_dtype dt;
	struct ag_tensor *t;
	int ndim;

	cr_assert_not_null(st, "%s", ag_errmsg());
	cr_assert_eq(ag_safetensors_count(st), 3);
	cr_assert_str_eq(ag_safetensors_name(st, 0), "a");
	cr_assert_str_eq(ag_safetensors_name(st, 1), "b");
	cr_assert_str_eq(ag_safetensors_name(st, 2), "h");
	cr_assert_str_eq(ag_safetensors_metadata(st, "format"), "pt");
	cr_assert_str_eq(ag_safetensors_metadata(st, "note"), "hand written");
	cr_assert_null(ag_safetensors_metadata(st, "other"));
	cr_assert_eq(ag_safetensors_info(st, "a", &dt, &ndim, &shape), 0);
	cr_assert_eq(dt, AG_I64);
	cr_assert_eq(ndim, 2);
	cr_assert_eq(shape[0], 2);
	cr_assert_eq(shape[1], 2);
	t = ag_safetensors_get(st, "a");
	assert_bytes(t, a, sizeof(a));
	ag_tensor_put(t);
	t = ag_safetensors_get(st, "b");
	assert_bytes(t, b, sizeof(b));
	ag_tensor_put(t);
	cr_assert_null(ag_safetensors_get(st, "h"));
	AG_ASSERT_ERR(AG_EDTYPE, "BF16");
	cr_assert_eq(ag_safetensors_info(st, "h", &dt, &ndim, &shape),
		     -AG_EDTYPE);
	ag_clear_error();
	ag_safetensors_close(st);
	AG_ASSERT_NO_LEAKS();
}

/* Every prefix of a valid file is refused as corrupt. */
Test(nn_checkpoint, every_truncation_fails)
{
	struct ag_tensor *ts[] = { ag_scalar(AG_F64, 2),
				   ag_ones(AG_F32, 1, (int64_t[]){ 3 }) };
	const char *names[] = { "x", "y" };
	unsigned char *buf;
	size_t n;

	cr_assert_eq(ag_safetensors_save(path_in("full"), names, ts, 2), 0);
	buf = read_file(path_in("full"), &n);
	for (size_t len = 0; len < n; len++) {
		write_file(path_in("cut"), buf, len);
		cr_assert_null(ag_safetensors_open(path_in("cut")), "len %zu",
			       len);
		cr_assert_eq(ag_errcode(), AG_EIO, "len %zu: %s", len,
			     ag_errmsg());
		ag_clear_error();
	}
	write_file(path_in("cut"), buf, n);
	ag_safetensors_close(ag_safetensors_open(path_in("cut")));
	cr_assert_eq(ag_errcode(), 0, "%s", ag_errmsg());
	free(buf);
	ag_tensor_put(ts[0]);
	ag_tensor_put(ts[1]);
	AG_ASSERT_NO_LEAKS();
}

/* A file of header text hdr (length hlen as given, or its own) + ndata. */
static void write_st(const char *hdr, int64_t hlen, size_t ndata)
{
	size_t h = strlen(hdr), n = 8 + h + ndata;
	unsigned char *buf = calloc(1, n);
	uint64_t l = hlen < 0 ? h : (uint64_t)hlen;

	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)(l >> (8 * i));
	memcpy(buf + 8, hdr, h);
	write_file(path_in("bad"), buf, n);
	free(buf);
}

static void assert_refused(const char *hdr, int64_t hlen, size_t ndata,
			   const char *what, const char *key)
{
	write_st(hdr, hlen, ndata);
	cr_assert_null(ag_safetensors_open(path_in("bad")), "%s", hdr);
	cr_assert_eq(ag_errcode(), AG_EIO, "%s: %s", hdr, ag_errmsg());
	cr_assert(strstr(ag_errmsg(), what), "%s: \"%s\" lacks \"%s\"", hdr,
		  ag_errmsg(), what);
	if (key)
		cr_assert(strstr(ag_errmsg(), key), "\"%s\" lacks \"%s\"",
			  ag_errmsg(), key);
	ag_clear_error();
	AG_ASSERT_NO_LEAKS();
}

#define F32(name, shape, b, e)                             \
	"\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape \
	",\"data_offsets\":[" #b "," #e "]}"

Test(nn_checkpoint, corrupt_files_each_say_why)
{
	/* sanity: the helper makes good files too */
	write_st("{" F32("a", "[2]", 0, 8) "}", -1, 8);
	ag_safetensors_close(ag_safetensors_open(path_in("bad")));
	cr_assert_eq(ag_errcode(), 0, "%s", ag_errmsg());

	write_file(path_in("bad"), "\0\0\0\0\0\0\0", 7);
	cr_assert_null(ag_safetensors_open(path_in("bad")));
	AG_ASSERT_ERR(AG_EIO, "too short");
	assert_refused("", 0, 0, "begin with '{'", NULL);
	assert_refused("{}", 1000, 0, "runs past the end", NULL);
	assert_refused("{}", 200000000, 0, "over the", NULL);
	assert_refused(" {}", -1, 0, "begin with '{'", NULL);
	assert_refused("{\"a\":{\"dtype\":\"F32\",", -1, 0, "not valid JSON",
		       NULL);
	assert_refused("{\"a\":1}", -1, 0, "is not an object", "'a'");
	assert_refused("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],"
		       "\"data_offsets\":[0,4]}}",
		       -1, 4, "unknown dtype \"F33\"", "'a'");
	assert_refused("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4,
		       "no dtype", "'a'");
	assert_refused("{" F32("w", "[3]", 0, 8) "}", -1, 8,
		       "hold 8 bytes but F32 of its shape needs 12", "'w'");
	assert_refused("{" F32("w", "[-1]", 0, 0) "}", -1, 0, "shape[0] is not",
		       "'w'");
	assert_refused("{" F32("w", "[1.5]", 0, 4) "}", -1, 4,
		       "shape[0] is not", "'w'");
	assert_refused("{" F32("w", "[4611686018427387904,4]", 0, 0) "}", -1, 0,
		       "overflows", "'w'");
	assert_refused("{" F32("w", "[2]", 8, 0) "}", -1, 8,
		       "0 <= begin <= end", "'w'");
	assert_refused("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
		       "\"data_offsets\":[0]}}",
		       -1, 8, "no data_offsets", "'w'");
	assert_refused("{" F32("w", "[2]", 0, 8) "}", -1, 4, "run past", "'w'");
	assert_refused("{" F32("a", "[2]", 0, 8) "," F32("b", "[2]", 4, 12) "}",
		       -1, 12, "overlaps", "'b'");
	assert_refused("{" F32("a", "[1]", 0, 4) "," F32("b", "[1]", 8, 12) "}",
		       -1, 12, "belong to no tensor", "'b'");
	assert_refused("{" F32("a", "[1]", 0, 4) "}", -1, 8,
		       "after the last tensor", NULL);
	assert_refused("{" F32("a", "[1]", 0, 4) "," F32("a", "[1]", 0, 4) "}",
		       -1, 4, "duplicate", "a");
	assert_refused("{\"__metadata__\":{\"k\":1}}", -1, 0,
		       "\"__metadata__\" value", "'k'");
	assert_refused("{\"__metadata__\":[]}", -1, 0, "\"__metadata__\" is",
		       NULL);
}

Test(nn_checkpoint, bad_save_arguments)
{
	struct ag_tensor *ts[] = { ag_scalar(AG_F32, 1), ag_scalar(AG_F32, 2) };
	const char *dup[] = { "a", "a" }, *meta[] = { "__metadata__", "b" },
		   *null_name[] = { "a", NULL };
	struct ag_tensor *null_t[] = { ts[0], NULL };

	cr_assert_eq(ag_safetensors_save(path_in("x"), dup, ts, 2), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "'a' is given twice");
	cr_assert_eq(ag_safetensors_save(path_in("x"), meta, ts, 2),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "reserved");
	cr_assert_eq(ag_safetensors_save(path_in("x"), null_name, ts, 2),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "names[1]");
	cr_assert_eq(ag_safetensors_save(path_in("x"), dup, null_t, 2),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "tensors[1]");
	cr_assert_eq(ag_safetensors_save(NULL, dup, ts, 2), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "NULL");
	cr_assert_eq(count_entries(), 0);
	ag_tensor_put(ts[0]);
	ag_tensor_put(ts[1]);
	AG_ASSERT_NO_LEAKS();
}

/* The old file at the path is loadable and unchanged after the failure. */
static void assert_old_file(void)
{
	struct ag_safetensors *st = ag_safetensors_open(path_in("ck"));
	struct ag_tensor *t;

	cr_assert_not_null(st, "%s", ag_errmsg());
	cr_assert_eq(ag_safetensors_count(st), 1);
	t = ag_safetensors_get(st, "old");
	cr_assert_not_null(t);
	cr_assert_eq(ag_tensor_item(t), 5.0);
	ag_tensor_put(t);
	ag_safetensors_close(st);
}

Test(nn_checkpoint, failed_save_keeps_old_file)
{
	struct ag_tensor *old = ag_scalar(AG_F64, 5);
	struct ag_tensor *big = ag_ones(AG_F32, 1, (int64_t[]){ 1 << 18 });
	const char *on[] = { "old" }, *bn[] = { "new" }, *dup[] = { "n", "n" };
	struct ag_tensor *two[] = { big, big };
	struct rlimit rl = { .rlim_cur = 4096, .rlim_max = RLIM_INFINITY };

	cr_assert_eq(ag_safetensors_save(path_in("ck"), on, &old, 1), 0);
	cr_assert_eq(count_entries(), 1);

	/* refused before any file is made */
	cr_assert_eq(ag_safetensors_save(path_in("ck"), dup, two, 2),
		     -AG_EINVAL);
	ag_clear_error();
	assert_old_file();

	/* the target is a directory: the rename fails after the write */
	cr_assert_eq(mkdir(path_in("d"), 0755), 0);
	cr_assert_eq(ag_safetensors_save(path_in("d"), bn, &big, 1), -AG_EIO);
	AG_ASSERT_ERR(AG_EIO, "Is a directory");
	cr_assert_eq(count_entries(), 2, "a temporary file was left");

	/* the directory of the path does not exist */
	cr_assert_eq(ag_safetensors_save(path_in("no/ck"), bn, &big, 1),
		     -AG_EIO);
	AG_ASSERT_ERR(AG_EIO, "No such file");

	/* the write itself fails half way: a 4 KiB file size limit */
	signal(SIGXFSZ, SIG_IGN);
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	cr_assert_eq(ag_safetensors_save(path_in("ck"), bn, &big, 1), -AG_EIO);
	AG_ASSERT_ERR(AG_EIO, "File too large");
	rl.rlim_cur = RLIM_INFINITY;
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	cr_assert_eq(count_entries(), 2, "a temporary file was left");
	assert_old_file();

	/* and a good save replaces it */
	cr_assert_eq(ag_safetensors_save(path_in("ck"), bn, &big, 1), 0);
	cr_assert_eq(count_entries(), 2);
	ag_tensor_put(old);
	ag_tensor_put(big);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_checkpoint, open_errors)
{
	cr_assert_null(ag_safetensors_open(path_in("missing")));
	AG_ASSERT_ERR(AG_EIO, "No such file");
	cr_assert_null(ag_safetensors_open(dir));
	AG_ASSERT_ERR(AG_EIO, "not a regular file");
	cr_assert_null(ag_safetensors_open(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "NULL");
	ag_safetensors_close(NULL);
	AG_ASSERT_NO_LEAKS();
}
