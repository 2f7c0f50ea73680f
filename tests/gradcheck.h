/* Numerical gradient checking for the autograd tests. */
#ifndef MX_TEST_GRADCHECK_H
#define MX_TEST_GRADCHECK_H

#include <stdbool.h>

#include "autograd/ops.h"

#define GC_MAX_LEAVES 8

typedef struct gc_case gc_case;
typedef ag_var *(*gc_forward_fn)(ag_ctx *ctx, gc_case *g);

struct gc_case {
    const char *name;
    gc_forward_fn forward;
    ag_var leaf[GC_MAX_LEAVES];
    bool borrowed[GC_MAX_LEAVES]; /* storage owned elsewhere (model parameters) */
    int n_leaf;
    int i[4];
    int32_t labels[64];
    float running_mean[64], running_var[64];
    mm_sites sites; /* site, site2 */
    mm_site site, site2;
    float h, atol, rtol;
    bool richardson; /* (4 D(h/2) - D(h)) / 3: cancels the h^2 error on strongly curved losses */
    bool multi_h;    /* try h, h/3, h/9, h/27 and keep the closest: a ReLU kink crossed at one step
                        size spoils that estimate only, while a wrong gradient mismatches at all */
    unsigned seed;
    void *user;
};

void gc_begin(gc_case *g, const char *name, gc_forward_fn f);
/* Adds a leaf with random N(0, scale^2) values (and a gradient buffer). */
ag_var *gc_leaf(gc_case *g, int ndim, const int64_t *shape, float scale);
/* Adds an existing leaf (storage stays with its owner). */
void gc_borrow(gc_case *g, ag_var *v);
/* Keeps leaf k's values at least margin away from 0 (relu's kink). */
void gc_away_from_zero(gc_case *g, int k, float margin);
/* Makes leaf k's values pairwise at least `gap` apart (maxpool ties). */
void gc_distinct(gc_case *g, int k, float gap);
/* Runs the check (ck_assert on failure) and frees the case. */
void gc_run(gc_case *g);
void gc_end(gc_case *g);
bool gc_op_seen(int op);

#endif
