/* test_kernel_errors.c - a kernel that cannot run is an error, not an abort.
 *
 * fw_matmul_fail_primitives (a test hook in core/engine/src/matmul.c) makes every
 * oneDNN primitive creation fail, as it would for a shape, dtype or CPU that
 * oneDNN cannot serve. fw_graph_forward and fw_graph_backward must then
 * return the status with one line in the context's error that names the
 * node, the op and the product, leave the process running, and work again
 * once primitives can be created. */
#include <check.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "internal.h"

#define ck_has(msg, s) \
	ck_assert_msg(strstr(msg, s) != NULL, "'%s' does not contain '%s'", msg, s)

struct net {
	struct fw_ctx *ctx;
	struct fw_graph *g;
	struct fw_tensor *x, *loss;
};

/* loss = mean((W x)^2), x (8, 16), W (32, 16): one matmul. */
static void net_new(struct net *n)
{
	n->ctx = fw_ctx_new();
	ck_assert_ptr_nonnull(n->ctx);
	n->x = fw_input(n->ctx, "x", FW_F32, 2, (int64_t[]){ 8, 16 });
	struct fw_tensor *w = fw_param(n->ctx, "w", FW_F32, 2, (int64_t[]){ 32, 16 }, true);
	fw_param_set_init(w, FW_INIT_NORMAL, 0.3f);
	struct fw_tensor *y = fw_linear(n->ctx, n->x, w, NULL);
	n->loss = fw_mean(n->ctx, fw_mul(n->ctx, y, y), FW_AXIS_ALL, false);
	ck_assert_msg(n->loss != NULL, "%s", fw_ctx_err(n->ctx)->msg);
	n->g = fw_graph_new(n->ctx, &n->loss, 1,
			    &(struct fw_graph_opts){ .backward = true, .training = true });
	ck_assert_msg(n->g != NULL, "%s", fw_ctx_err(n->ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(n->ctx, 3), FW_OK);
	struct fwt_rng r = fwt_rng_new(5);
	fwt_fill_uniform(fw_f32(n->x), 8 * 16, &r, -1, 1);
}

static void net_free(struct net *n)
{
	fw_graph_free(n->g);
	fw_ctx_free(n->ctx);
}

static void one_line_naming(const char *msg, const char *pass)
{
	ck_assert_msg(!strchr(msg, '\n') && msg[0], "not one line: '%s'", msg);
	ck_has(msg, pass);
	ck_has(msg, "(matmul)");
	ck_has(msg, "oneDNN rejected a");
	ck_has(msg, "f32 product");
}

START_TEST(test_forward_reports)
{
	struct net n;
	net_new(&n);
	fw_matmul_fail_primitives(true);
	ck_assert_int_eq(fw_graph_forward(n.g), FW_ERR_INTERNAL);
	one_line_naming(fw_ctx_err(n.ctx)->msg, "graph: forward of");
	ck_has(fw_ctx_err(n.ctx)->msg, "8x32x16 f32 product");
	/* no outputs: backward refuses instead of reading them */
	ck_assert_int_eq(fw_graph_backward(n.g), FW_ERR_INVALID);
	ck_has(fw_ctx_err(n.ctx)->msg, "backward called before forward");

	/* primitives can be created again: the same graph runs */
	fw_matmul_fail_primitives(false);
	ck_assert_msg(fw_graph_forward(n.g) == FW_OK, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_msg(fw_graph_backward(n.g) == FW_OK, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert(isfinite(fw_f32(n.loss)[0]) && fw_f32(n.loss)[0] > 0);
	net_free(&n);
}
END_TEST

START_TEST(test_backward_reports)
{
	struct net n;
	net_new(&n);
	ck_assert_msg(fw_graph_forward(n.g) == FW_OK, "%s", fw_ctx_err(n.ctx)->msg);
	float loss = fw_f32(n.loss)[0];
	fw_matmul_fail_primitives(true);          /* also drops the cached ones */
	ck_assert_int_eq(fw_graph_backward(n.g), FW_ERR_INTERNAL);
	one_line_naming(fw_ctx_err(n.ctx)->msg, "graph: backward of");
	/* the forward outputs stay readable */
	ck_assert_float_eq(fw_f32(n.loss)[0], loss);
	fw_matmul_fail_primitives(false);
	fw_graph_zero_grad(n.g);
	ck_assert_msg(fw_graph_forward(n.g) == FW_OK, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_msg(fw_graph_backward(n.g) == FW_OK, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_float_eq(fw_f32(n.loss)[0], loss);
	net_free(&n);
}
END_TEST

static void exit_on_abort(const char *file, int line, const char *expr)
{
	_exit(42);
}

/* Outside a graph run, a kernel failure has nowhere to go: a broken invariant. */
START_TEST(test_fail_outside_a_run_asserts)
{
	fw_set_abort_handler(exit_on_abort);
	struct fw_err e = { .status = FW_ERR_INTERNAL, .msg = "x" };
	fw_kernel_fail(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("kernel_errors");
	TCase *tc = fwt_tcase("graph", 60);
	tcase_add_test(tc, test_forward_reports);
	tcase_add_test(tc, test_backward_reports);
	tcase_add_exit_test(tc, test_fail_outside_a_run_asserts, 42);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
