// SPDX-License-Identifier: MIT
#include "common.h"

Test(tensor, zeros_are_zero)
{
	int64_t shape[2] = { 2, 3 };
	struct ag_tensor *t = ag_zeros(AG_F32, 2, shape);

	cr_assert_eq(ag_tensor_numel(t), 6);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ag__get(t, i), 0.0);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}
