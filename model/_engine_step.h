/* The engine's step as a C call, for loops in another extension (model/_cm_kernel.c).
 *
 * Why: cm + transformer decodes one byte at a time, each byte needing the engine's table
 * from the bytes before it. Going through Python for every byte (the engine's step, the
 * cm kernel's set_ext and decode_run) cost ~4 us a byte, a fifth of the decoding time.
 * Engine.stepper() returns a capsule named TZ_STEPPER_CAPSULE holding a TzStepper bound
 * to the engine's weights and KV caches; the cm kernel's decode_run calls it once per
 * byte. Same code as Kernel.step, so the same tables. */
#ifndef TZ_ENGINE_STEP_H
#define TZ_ENGINE_STEP_H
#include <stdint.h>

#define TZ_STEPPER_CAPSULE "tinyzip.model._engine_kernel.stepper.v1"

typedef struct TzStepper {
    /* streams [b0, b1) at position t: the tables of their next symbol after the inputs
     * ids[0 .. b1 - b0) (BOS = V) into out[0 .. b1 - b0) (rows of V) */
    void (*step)(struct TzStepper *s, const int64_t *ids, int b0, int b1, int64_t t,
                 uint32_t *out);
    int V;       /* table width (symbols) */
    int streams; /* the caches' streams: n <= streams */
} TzStepper;

#endif
