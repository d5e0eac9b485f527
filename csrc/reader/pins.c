/* pins.c — what every Python shares about pins (pins.h), and Pythons without any. */
#include "pins.h"

int mt_pins_on;

#if MT_PINS == MT_PINS_NONE
const char *mt_pins_start(void) {
    return "this Python offers no proof that a frame stayed on the stack (3.12 and later do)";
}

int mt_pin(mt_reader_thread *t, void *frame, void *code, int at_once) {
    return 0;
}
#endif
