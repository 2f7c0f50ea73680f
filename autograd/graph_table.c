/* The op table: name and backward function of every op, indexed by ag_op. */
#include "autograd/graph.h"
#include "autograd/ops_util.h"

#define AG_ENTRY(op, name) [AG_OP_##op] = {#name, ag_##name##_backward, false}
#define AG_ENTRY_BF16(op, name) [AG_OP_##op] = {#name, ag_##name##_backward, true}

const ag_op_info ag_op_table[AG_OP_COUNT] = {
    AG_ENTRY(LINEAR, linear),       AG_ENTRY(MATMUL, matmul),           AG_ENTRY(CONV2D, conv2d),
    AG_ENTRY(BATCHNORM2D, batchnorm2d), AG_ENTRY_BF16(LAYERNORM, layernorm), AG_ENTRY_BF16(RELU, relu),
    AG_ENTRY_BF16(GELU, gelu),           AG_ENTRY_BF16(GELU_TANH, gelu_tanh),     AG_ENTRY_BF16(SOFTMAX, softmax),
    AG_ENTRY(ATTENTION, attention), AG_ENTRY(MAXPOOL2D, maxpool2d),     AG_ENTRY(AVGPOOL_GLOBAL, avgpool_global),
    AG_ENTRY_BF16(ADD, add),             AG_ENTRY(RESHAPE, reshape),         AG_ENTRY(PERMUTE, permute),
    AG_ENTRY(CONCAT, concat),       AG_ENTRY(SLICE, slice),             AG_ENTRY(DROPOUT, dropout),
    AG_ENTRY(DROP_PATH, drop_path), AG_ENTRY(CROSS_ENTROPY, cross_entropy), AG_ENTRY(MEAN, mean),
    AG_ENTRY(SUM, sum),
};
_Static_assert(sizeof ag_op_table / sizeof ag_op_table[0] == AG_OP_COUNT, "op table covers every op");
