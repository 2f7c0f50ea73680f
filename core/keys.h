/* Names and configuration keys, written once.
 *
 * mx_enum: the names of an enum a user types (formats, model families,
 * schedules, ...), taken from the table that defines the enum. Parsing, the
 * "valid: ..." list of an error, --keys and docs/config.md all read it.
 *
 * key_def: one configuration key of a module, declared beside the module's
 * config struct: its name, type, the field it sets (offset into the struct),
 * default, range and documentation. train/config.c only composes the
 * modules' tables into sections; adding a key touches one table and its use. */
#ifndef MX_CORE_KEYS_H
#define MX_CORE_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "core/error.h"

typedef struct mx_enum {
    const char *what;              /* "format", "model.arch", ... (for messages) */
    int count;
    const char *(*name)(int i);    /* canonical name of value i */
    const char *(*alias)(int i);   /* another accepted name, or NULL (may be NULL) */
    /* Names of a parametric family outside the table (bdr_m7_k16_s2_d1), or
     * NULL: returns 1 when s is not of the family's form, 0 with *out set,
     * -1 with a message when it is of the form but invalid. name(i) must
     * also answer for the values it returns. */
    int (*parse)(const char *s, int *out, mx_err *err);
    const char *family; /* how the family is written, for "valid:" lists */
} mx_enum;

/* An mx_enum over a plain array of names (count from the array). */
#define MX_ENUM_OF_NAMES(var, what, names)                                                     \
    static const char *var##_name_at(int i) { return names[i]; }                               \
    const mx_enum var = {what, (int)(sizeof names / sizeof names[0]), var##_name_at, NULL, NULL, NULL}

/* Value of name s (or an alias); -1 and "unknown WHAT 's' (valid: a, b, c)" otherwise. */
int mx_enum_parse(const mx_enum *e, const char *s, int *out, mx_err *err);
/* "a, b, c" (with `quote` around each name when set). */
void mx_enum_list(const mx_enum *e, bool quote, char *buf, size_t n);

typedef enum key_type {
    KEY_INT,     /* int */
    KEY_I64,     /* int64_t */
    KEY_FLOAT,   /* float */
    KEY_DOUBLE,  /* double */
    KEY_BOOL,    /* bool: true/false, 1/0, yes/no */
    KEY_TEXT,    /* char[size]; min: the shortest length */
    KEY_ENUM,    /* an int-sized enum named by an mx_enum; optional: "" stores -1 (inherit) */
    KEY_CUSTOM,  /* parsed by the key's own function into the module's struct */
    KEY_TYPE_COUNT
} key_type;

typedef struct key_def {
    const char *name;
    key_type type;
    size_t offset, size;  /* the field in the module's struct */
    const char *def;      /* default, as text */
    double min, max;      /* numeric range (inclusive) */
    const mx_enum *values;
    bool optional;
    int (*parse)(const char *text, void *cfg, mx_err *err);
    const char *doc;
} key_def;

/* A module's keys: one section of a config file. */
typedef struct key_table {
    const char *section;
    const key_def *keys;
    int n;
} key_table;

#define KEY_FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f)
#define KEY_NUM(T, name, type, field, def, lo, hi, doc) \
    {name, KEY_##type, KEY_FIELD(T, field), def, lo, hi, NULL, false, NULL, doc}
#define KEY_BOOLV(T, name, field, def, doc) {name, KEY_BOOL, KEY_FIELD(T, field), def, 0, 0, NULL, false, NULL, doc}
#define KEY_TEXTV(T, name, field, def, doc) {name, KEY_TEXT, KEY_FIELD(T, field), def, 0, 0, NULL, false, NULL, doc}
/* text that must not be empty (min: the shortest length) */
#define KEY_TEXT_NONEMPTY(T, name, field, def, doc) \
    {name, KEY_TEXT, KEY_FIELD(T, field), def, 1, 0, NULL, false, NULL, doc}
#define KEY_ENUMV(T, name, field, def, values, doc) \
    {name, KEY_ENUM, KEY_FIELD(T, field), def, 0, 0, values, false, NULL, doc}
#define KEY_ENUM_OPT(T, name, field, values, doc) \
    {name, KEY_ENUM, KEY_FIELD(T, field), "", 0, 0, values, true, NULL, doc}
#define KEY_CUSTOMV(name, def, parse, doc) {name, KEY_CUSTOM, 0, 0, def, 0, 0, NULL, false, parse, doc}
#define KEY_TABLE(sec, arr) {sec, arr, (int)(sizeof arr / sizeof arr[0])}

/* Parses text into key k of the module struct cfg; the message (without the
 * key's name) says what is wrong. */
int key_set(const key_def *k, void *cfg, const char *text, mx_err *err);
/* The type column of the reference: "int in [1, 64]", "one of `a`, `b`", ... */
void key_type_text(const key_def *k, char *buf, size_t n);

/* Comma-separated numbers: count in [lo, hi]; positive integers <= 65536 when want_int. */
int key_parse_list(const char *v, double *out, int lo, int hi, bool want_int, int *n, mx_err *err);

#endif
