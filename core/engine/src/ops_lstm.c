/* ops_lstm.c - one LSTM layer in one direction (fw_lstm in fw/ops.h), with
 * torch.nn.LSTM's equations and gate order (i, f, g, o):
 *
 *     z_t = x_t W_ih^T + h_prev W_hh^T + bias          (4H)
 *     i, f, o = sigmoid(z_i, z_f, z_o); g = tanh(z_g)
 *     c_t = f * c_prev + i * g;  h_t = o * tanh(c_t)
 *
 * from h = c = 0, over t = 0..T-1, or T-1..0 in reverse (the second
 * direction of a bidirectional layer), with y[:, t] = h_t. Backward is
 * backpropagation through time; it first recomputes the gates and cells of
 * a sequence (the workspace does not live from forward to backward).
 * Sequences run one after the other: the op serves P-tuning's prompt
 * encoder (one short sequence), not large recurrent models.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

static enum fw_status lstm_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *wi = out->src[1], *wh = out->src[2],
			       *b = out->src[3];
	char s[4][64];
	if (!wi || !wh || !b)
		return fw_errorf(err, FW_ERR_INVALID, "lstm: w_ih, w_hh and bias are required");
	if (x->dtype != FW_F32 || wi->dtype != FW_F32 || wh->dtype != FW_F32 ||
	    b->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "lstm: x, w_ih, w_hh and bias must be f32");
	int64_t H = wh->ndim == 2 ? wh->ne[1] : 0;
	if (x->ndim != 3 || wi->ndim != 2 || wh->ndim != 2 || b->ndim != 1 ||
	    wi->ne[0] != 4 * H || wi->ne[1] != x->ne[2] || wh->ne[0] != 4 * H ||
	    b->ne[0] != 4 * H)
		return fw_errorf(err, FW_ERR_SHAPE, "lstm: x %s, w_ih %s, w_hh %s, bias %s; "
				 "expected (B, T, I), (4H, I), (4H, H), (4H)",
				 fw_shape_str(x, s[0], 64), fw_shape_str(wi, s[1], 64),
				 fw_shape_str(wh, s[2], 64), fw_shape_str(b, s[3], 64));
	out->dtype = FW_F32;
	out->ndim = 3;
	out->ne[0] = x->ne[0];
	out->ne[1] = x->ne[1];
	out->ne[2] = H;
	return FW_OK;
}

static inline float sigm(float z)
{
	return 1.0f / (1.0f + expf(-z));
}

/* One sequence: x (T, I) -> y (T, H); with acts, the activated gates (T, 4H)
 * and cells (T, H) of every step too. tmp holds 2H + 4H floats. */
static void lstm_seq(const struct fw_tensor *out, const float *x, float *y, float *acts,
		     float *cells, float *tmp)
{
	const float *wi = fw_f32(out->src[1]), *wh = fw_f32(out->src[2]),
		    *bias = fw_f32(out->src[3]);
	int64_t T = out->ne[1], H = out->ne[2], I = out->src[0]->ne[2];
	bool rev = out->params[0].i;
	float *h = tmp, *c = tmp + H, *z = tmp + 2 * H;
	memset(h, 0, sizeof(float) * (size_t)(2 * H));
	for (int64_t s = 0; s < T; s++) {
		int64_t t = rev ? T - 1 - s : s;
		const float *xt = x + t * I;
		for (int64_t j = 0; j < 4 * H; j++) {
			float a = bias[j];
			const float *ri = wi + j * I, *rh = wh + j * H;
			for (int64_t k = 0; k < I; k++)
				a += ri[k] * xt[k];
			for (int64_t k = 0; k < H; k++)
				a += rh[k] * h[k];
			z[j] = a;
		}
		for (int64_t k = 0; k < H; k++) {
			float ig = sigm(z[k]), fg = sigm(z[H + k]), gg = tanhf(z[2 * H + k]),
			      og = sigm(z[3 * H + k]);
			c[k] = fg * c[k] + ig * gg;
			h[k] = og * tanhf(c[k]);
			if (acts) {
				float *a = acts + s * 4 * H;
				a[k] = ig, a[H + k] = fg, a[2 * H + k] = gg, a[3 * H + k] = og;
				cells[s * H + k] = c[k];
			}
		}
		memcpy(y + t * H, h, sizeof(float) * (size_t)H);
	}
}

static void lstm_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	int64_t B = out->ne[0], T = out->ne[1], H = out->ne[2], I = out->src[0]->ne[2];
	for (int64_t b = 0; b < B; b++)
		lstm_seq(out, fw_f32(out->src[0]) + b * T * I, fw_f32(out) + b * T * H, NULL, NULL,
			 ex->ws);
}

static void lstm_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *xs = out->src[0];
	const float *wi = fw_f32(out->src[1]), *wh = fw_f32(out->src[2]);
	float *gx = xs->grad ? fw_f32(xs->grad) : NULL;
	float *gwi = out->src[1]->grad ? fw_f32(out->src[1]->grad) : NULL;
	float *gwh = out->src[2]->grad ? fw_f32(out->src[2]->grad) : NULL;
	float *gb = out->src[3]->grad ? fw_f32(out->src[3]->grad) : NULL;
	int64_t B = out->ne[0], T = out->ne[1], H = out->ne[2], I = xs->ne[2];
	bool rev = out->params[0].i;
	/* workspace: y (T, H), gates (T, 4H), cells (T, H), tmp 6H, dh dc 2H, dz 4H */
	float *y = ex->ws, *acts = y + T * H, *cells = acts + T * 4 * H, *tmp = cells + T * H;
	float *dh = tmp + 6 * H, *dc = dh + H, *dz = dc + H;
	for (int64_t b = 0; b < B; b++) {
		const float *x = fw_f32(xs) + b * T * I, *dy = fw_f32(out->grad) + b * T * H;
		lstm_seq(out, x, y, acts, cells, tmp);
		memset(dh, 0, sizeof(float) * (size_t)(2 * H));     /* dh, dc from step s + 1 */
		for (int64_t s = T - 1; s >= 0; s--) {
			int64_t t = rev ? T - 1 - s : s, tp = rev ? t + 1 : t - 1;
			const float *a = acts + s * 4 * H;
			const float *cp = s ? cells + (s - 1) * H : NULL;
			const float *hp = s ? y + tp * H : NULL;        /* h of step s - 1 */
			for (int64_t k = 0; k < H; k++) {
				float ig = a[k], fg = a[H + k], gg = a[2 * H + k], og = a[3 * H + k];
				float tc = tanhf(cells[s * H + k]);
				float dht = dy[t * H + k] + dh[k];
				float dct = dht * og * (1.0f - tc * tc) + dc[k];
				dz[k] = dct * gg * ig * (1.0f - ig);
				dz[H + k] = (cp ? dct * cp[k] : 0.0f) * fg * (1.0f - fg);
				dz[2 * H + k] = dct * ig * (1.0f - gg * gg);
				dz[3 * H + k] = dht * tc * og * (1.0f - og);
				dc[k] = dct * fg;
			}
			const float *xt = x + t * I;
			for (int64_t j = 0; j < 4 * H; j++) {
				if (gb)
					gb[j] += dz[j];
				if (gwi)
					for (int64_t k = 0; k < I; k++)
						gwi[j * I + k] += dz[j] * xt[k];
				if (gwh && hp)
					for (int64_t k = 0; k < H; k++)
						gwh[j * H + k] += dz[j] * hp[k];
			}
			if (gx)
				for (int64_t k = 0; k < I; k++) {
					float v = 0.0f;
					for (int64_t j = 0; j < 4 * H; j++)
						v += dz[j] * wi[j * I + k];
					gx[b * T * I + t * I + k] += v;
				}
			for (int64_t k = 0; k < H; k++) {
				float v = 0.0f;
				for (int64_t j = 0; j < 4 * H; j++)
					v += dz[j] * wh[j * H + k];
				dh[k] = v;
			}
		}
	}
}

static size_t lstm_workspace(const struct fw_tensor *out)
{
	int64_t T = out->ne[1], H = out->ne[2];
	return sizeof(float) * (size_t)(T * 6 * H + 12 * H);
}

static uint32_t lstm_saved(const struct fw_tensor *out)
{
	(void)out;
	return 0xfu;               /* the sources; backward recomputes the rest */
}

const struct fw_op_i fw_op_lstm_i = {
	.size = sizeof(struct fw_op_i),
	.name = "lstm",
	.infer = lstm_infer,
	.forward = lstm_forward,
	.backward = lstm_backward,
	.workspace = lstm_workspace,
	.saved = lstm_saved,
};
