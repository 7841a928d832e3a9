// SPDX-License-Identifier: MIT
/*
 * ag_safetensors_open over arbitrary bytes: it must refuse every corrupt
 * file cleanly, and whatever it accepts must be readable entry by entry
 * without a fault or a leak.
 */
#include "fuzz.h"

#include "../../nn/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ag_safetensors *st;

	st = ag__safetensors_open_mem(data, size, "fuzz");
	if (st) {
		for (int i = 0; i < ag_safetensors_count(st); i++) {
			const char *name = ag_safetensors_name(st, i);
			const int64_t *shape;
			enum ag_dtype dt;
			int ndim;

			if (ag_safetensors_info(st, name, &dt, &ndim, &shape))
				continue;
			ag_tensor_put(ag_safetensors_get(st, name));
		}
		(void)ag_safetensors_metadata(st, "format");
		ag_safetensors_close(st);
	}
	ag_clear_error();
	fuzz_check_no_leaks();
	return 0;
}
