# Stand-in for MicroPython's machine module: records what the firmware did to the pins.
LOG = []


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin, mode=None):
        self.pin = pin

    def value(self, level):
        LOG.append(("pin", self.pin, level))


class ADC:
    def __init__(self, pin):
        self.pin = pin

    def read_u16(self):
        LOG.append(("adc", self.pin))
        return 32768


class PWM:
    def __init__(self, pin):
        self.pin = pin.pin

    def freq(self, hz):
        LOG.append(("freq", self.pin, hz))

    def duty_u16(self, duty):
        LOG.append(("duty", self.pin, duty))

    def deinit(self):
        LOG.append(("deinit", self.pin))
