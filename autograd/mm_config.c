/* The [quant] section: keys over mm_config, and the policy they describe. */
#include <stdio.h>
#include <string.h>

#include "autograd/mm.h"

static const char *const mm_elementwise_names[] = {"fp32", "bf16"};
_Static_assert(sizeof mm_elementwise_names / sizeof mm_elementwise_names[0] == MM_ELEMENTWISE_COUNT, "names");
MX_ENUM_OF_NAMES(mm_elementwise_enum, "elementwise precision", mm_elementwise_names);

static int mm_parse_block(const char *v, void *cfg, mx_err *err) {
    mm_config *c = cfg;
    int k;
    char extra;
    if (strcmp(v, "auto") == 0) {
        c->block = 0;
        return 0;
    }
    if (sscanf(v, "%d%c", &k, &extra) != 1 || k < 1 || k > 4096)
        return mx_err_set(err, "'%s' is not a block length (`auto` or 1..4096)", v);
    c->block = k;
    return 0;
}

static int mm_parse_tile(const char *v, void *cfg, mx_err *err) {
    mm_config *c = cfg;
    int r, k;
    if (strcmp(v, "auto") == 0) {
        c->tile_rows = c->tile_cols = 0;
        return 0;
    }
    char extra;
    if (sscanf(v, "%dx%d%c", &r, &k, &extra) != 2 || r < 1 || k < 1 || r > 64 || k > 64)
        return mx_err_set(err, "'%s' is not a tile (`auto` or ROWSxCOLS, e.g. 8x8, each 1..64)", v);
    c->tile_rows = r;
    c->tile_cols = k;
    return 0;
}

/* "pattern:format, pattern:format" */
static int mm_parse_keep(const char *v, void *cfg, mx_err *err) {
    mm_config *c = cfg;
    char buf[1024];
    if (strlen(v) >= sizeof buf) return mx_err_set(err, "longer than %zu characters", sizeof buf - 1);
    snprintf(buf, sizeof buf, "%s", v);
    mm_policy rules; /* the keep-rule checks live with the policy */
    mm_policy_init(&rules, QUANT_FORMAT_FP32);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && end[-1] == ' ') *--end = 0;
        if (!*tok) continue;
        char *colon = strchr(tok, ':');
        if (!colon || colon == tok || !colon[1])
            return mx_err_set(err, "'%s' is not PATTERN:FORMAT (e.g. conv1:bf16)", tok);
        *colon = 0;
        quant_format f;
        if (quant_format_parse(colon + 1, &f, err) || mm_policy_add_keep(&rules, tok, f, err)) return -1;
    }
    memcpy(c->keep, rules.keep, sizeof c->keep);
    c->n_keep = rules.n_keep;
    return 0;
}

#define QF(key, field, doc) KEY_ENUM_OPT(mm_config, key, field, &quant_format_enum, doc)
static const key_def mm_keys[] = {
    KEY_ENUMV(mm_config, "format", format, "fp32", &quant_format_enum,
              "format of every GEMM operand (docs/formats.md); `boost` is MXFP8_E2M5"),
    KEY_ENUMV(mm_config, "tiling", tiling, "2d", &mm_tiling_enum,
              "`1d` (blocks along each product's reduction axis, re-quantized for backward), `1d_requant`, `2d` "
              "(tiles quantized once, reused transposed)"),
    KEY_CUSTOMV("block", "auto", mm_parse_block,
                "1D block length 1..4096; `auto`: the format's own (32; k1 for mx9/mx6/mx4/bdr_...)"),
    KEY_CUSTOMV("tile", "auto", mm_parse_tile,
                "2D tile ROWSxCOLS, each 1..64; `auto`: the format's own (8x8; 4x4 for mx9/mx6/mx4)"),
    KEY_ENUMV(mm_config, "round", round, "even", &quant_round_enum, "rounding of every operand"),
    KEY_ENUM_OPT(mm_config, "grad_round", grad_round, &quant_round_enum,
                 "rounding of gradient operands (e.g. `stochastic`); empty = `round`"),
    KEY_ENUMV(mm_config, "scale", scale, "floor", &quant_scale_enum, "shared-scale mode"),
    KEY_ENUMV(mm_config, "elementwise", elementwise, "fp32", &mm_elementwise_enum,
              "`bf16`: norms, activations, softmax and residual adds round outputs to bfloat16; `fp32`: no rounding"),
    QF("fwd_act", fwd_act, "forward activation format; empty = `format`"),
    QF("fwd_weight", fwd_weight, "forward weight format"),
    QF("bwd_grad", bwd_grad, "output-gradient format in both backward products"),
    QF("bwd_act", bwd_act, "activation format in the dW product"),
    QF("bwd_weight", bwd_weight, "weight format in the dX product"),
    KEY_CUSTOMV("keep", "", mm_parse_keep,
                "per-layer overrides `pattern:format, ...` with `*` wildcards, e.g. `conv1:bf16, fc:bf16`"),
};
#undef QF
const key_table mm_key_table = KEY_TABLE("quant", mm_keys);

bool mm_config_policy(const mm_config *c, uint64_t seed, mm_policy *p) {
    mm_policy_init(p, c->format);
    const int over[MM_ROLE_COUNT] = {[MM_ROLE_FWD_ACT] = c->fwd_act,      [MM_ROLE_FWD_WEIGHT] = c->fwd_weight,
                                     [MM_ROLE_BWD_GRAD_DX] = c->bwd_grad, [MM_ROLE_BWD_WEIGHT_DX] = c->bwd_weight,
                                     [MM_ROLE_BWD_GRAD_DW] = c->bwd_grad, [MM_ROLE_BWD_ACT_DW] = c->bwd_act};
    for (int r = 0; r < MM_ROLE_COUNT; r++)
        if (over[r] >= 0) p->role_format[r] = (quant_format)over[r];
    p->tiling = c->tiling;
    p->block = c->block;
    p->tile_rows = c->tile_rows;
    p->tile_cols = c->tile_cols;
    p->round = c->round;
    p->grad_round = c->grad_round >= 0 ? (quant_round)c->grad_round : c->round;
    p->scale = c->scale;
    memcpy(p->keep, c->keep, sizeof p->keep);
    p->n_keep = c->n_keep;
    p->seed = seed;
    bool any = false;
    for (int r = 0; r < MM_ROLE_COUNT; r++) any |= p->role_format[r] != QUANT_FORMAT_FP32;
    for (int i = 0; i < p->n_keep; i++) any |= p->keep[i].format != QUANT_FORMAT_FP32;
    return any;
}
