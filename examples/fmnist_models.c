// SPDX-License-Identifier: MIT
#include <ag/ag.h>
#include <ag/nn.h>

#include "fmnist_models.h"

struct ag_module *fmnist_mlp(struct ag_generator *g)
{
	struct ag_module *m[] = {
		ag_flatten_new(1, -1),
		ag_linear_new(784, 512, true, g),
		ag_relu_new(),
		ag_dropout_new(0.2, NULL),
		ag_linear_new(512, 512, true, g),
		ag_relu_new(),
		ag_dropout_new(0.2, NULL),
		ag_linear_new(512, 10, true, g),
	};

	return ag_sequential_new(m, sizeof(m) / sizeof(m[0]));
}

struct ag_module *fmnist_cnn(int64_t hw, struct ag_generator *g)
{
	struct ag_conv2d_opts pad1 = { .stride = { 1, 1 },
				       .padding = { 1, 1 },
				       .dilation = { 1, 1 },
				       .groups = 1 };
	const int64_t two[2] = { 2, 2 };
	struct ag_module *m[] = {
		ag_conv2d_new(1, 32, 3, 3, &pad1, true, g),
		ag_relu_new(),
		ag_maxpool2d_new(two, NULL, NULL),
		ag_conv2d_new(32, 64, 3, 3, &pad1, true, g),
		ag_batchnorm2d_new(64, 1e-5, 0.1),
		ag_relu_new(),
		ag_maxpool2d_new(two, NULL, NULL),
		ag_flatten_new(1, -1),
		ag_linear_new(64 * (hw / 4) * (hw / 4), 128, true, g),
		ag_relu_new(),
		ag_linear_new(128, 10, true, g),
	};

	return ag_sequential_new(m, sizeof(m) / sizeof(m[0]));
}
