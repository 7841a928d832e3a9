/* SPDX-License-Identifier: MIT */
#ifndef AG_AG_H
#define AG_AG_H

#include <ag/error.h>
#include <ag/tensor.h>
#include <ag/mode.h>
#include <ag/ops.h>
#include <ag/autograd.h>
#include <ag/function.h>
#include <ag/pool.h>
#include <ag/memory.h>
#include <ag/trace.h>
#include <ag/checkpoint.h>
#include <ag/nn.h>
#include <ag/optim.h>
#include <ag/version.h>

#endif /* AG_AG_H */
