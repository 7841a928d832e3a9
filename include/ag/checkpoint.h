/* SPDX-License-Identifier: MIT */
#ifndef AG_CHECKPOINT_H
#define AG_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>
#include <ag/export.h>
#include <ag/tensor.h>

/*
 * Checkpoints in the safetensors format, the one PyTorch and Hugging Face
 * users exchange: a little-endian u64 header length N, N bytes of a JSON
 * object {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets":
 * [begin, end]}, ..., "__metadata__": {"key": "value"}}, then the raw
 * little-endian data, offsets counted from its start.
 *
 * ag_safetensors_save() writes tensors of any layout dense, names unique,
 * the data ordered by element size (largest first) then name, as the
 * reference writer does, so every tensor is aligned to its element size;
 * the header is padded with spaces to a multiple of 8 bytes.  It is atomic:
 * the file is written beside the target (same directory, created with
 * mkstemp), fsync'd, renamed over the target and the directory fsync'd; on
 * a failure before the rename the temporary file is removed and an existing
 * file at path is left as it was.  A failure after it (opening or syncing
 * the directory, AG_EIO naming "sync") leaves the new, complete file in
 * place, whose rename may not yet be on disk.  A new file gets mode 0644, a
 * replaced one keeps its mode.
 *
 * ag_safetensors_open() reads the whole file into memory with read() (not
 * mmap: a file truncated or rewritten by someone else later cannot fault
 * us, and get() copies anyway) and validates everything before it returns:
 * sizes, the JSON, every entry's dtype, shape, byte size and offsets, which
 * must tile the data area exactly.  A corrupt file fails with AG_EIO, a
 * message naming the key and what is wrong.  Entries of a dtype libag has
 * no type for (F16, BF16, I32, U8, BOOL, ...) or with more than
 * AG_MAX_DIMS dims are listed; ag_safetensors_get() on them fails with
 * AG_EDTYPE or AG_EINVAL.
 */
struct ag_safetensors;

AG_API int ag_safetensors_save(const char *path, const char *const *names,
			       struct ag_tensor *const *tensors, int n);
AG_API struct ag_safetensors *ag_safetensors_open(const char *path);
AG_API void ag_safetensors_close(struct ag_safetensors *st); /* NULL is fine */
/* Entries in the order of their data in the file. */
AG_API int ag_safetensors_count(const struct ag_safetensors *st);
AG_API const char *ag_safetensors_name(const struct ag_safetensors *st, int i);
/*
 * The dtype and shape of an entry (shape borrowed from st); -AG_EINVAL if
 * there is no such name, -AG_EDTYPE if libag has no such dtype or
 * -AG_EINVAL if it has more than AG_MAX_DIMS dims.
 */
AG_API int ag_safetensors_info(const struct ag_safetensors *st,
			       const char *name, enum ag_dtype *dt, int *ndim,
			       const int64_t **shape);
/* A new tensor holding a copy of the entry's data. */
AG_API struct ag_tensor *ag_safetensors_get(struct ag_safetensors *st,
					    const char *name);
/* A "__metadata__" value, borrowed from st; NULL if there is none. */
AG_API const char *ag_safetensors_metadata(const struct ag_safetensors *st,
					   const char *key);

/*
 * Module checkpoints (nn/module_io.c).  ag_module_save() writes the
 * module's state dict (parameters, then buffers, under torch's names) with
 * ag_safetensors_save().  ag_module_load() is ag_module_load_ex() with
 * strict loading: every key, dtype and shape is checked against the module
 * before anything is copied, so a file that does not fit changes nothing.
 * Non-strict loading, as torch's load_state_dict(strict=False), skips keys
 * the module lacks and leaves parameters the file lacks as they are; when
 * missing/unexpected are not NULL they receive the lists, arrays of
 * strings the caller frees with ag_load_keys_free().  A dtype or shape
 * mismatch is an error in both modes.
 */
struct ag_module;
struct ag_load_opts {
	bool strict;
	char ***missing;
	int *n_missing;
	char ***unexpected;
	int *n_unexpected;
};
#define AG_LOAD_OPTS_DEFAULT   \
	{                      \
		.strict = true \
	}

AG_API int ag_module_save(struct ag_module *m, const char *path);
AG_API int ag_module_load(struct ag_module *m, const char *path);
AG_API int ag_module_load_ex(struct ag_module *m, const char *path,
			     const struct ag_load_opts *o);
AG_API void ag_load_keys_free(char **keys, int n);

#endif /* AG_CHECKPOINT_H */
