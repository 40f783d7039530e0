# Tasks the board can run. Register more with @task; each returns JSON-serialisable data.
import gc
import time

TASKS = {}


def task(name=None):
    """Register a function as a task under its own name (or ``name``)."""

    def register(function):
        TASKS[name or function.__name__] = function
        return function

    return register


@task()
def read_sensor(sensor_pin=26):
    from machine import ADC

    value = ADC(sensor_pin).read_u16()
    return {
        "sensor_pin": sensor_pin,
        "raw_value": value,
        "voltage": value / 65535 * 3.3,
        "timestamp": time.time(),
    }


@task()
def control_led(pin, state):
    from machine import Pin

    Pin(pin, Pin.OUT).value(1 if state else 0)
    return "LED on pin {} {}".format(pin, "ON" if state else "OFF")


@task()
def move_servo(pin, angle):
    if not 0 <= angle <= 180:
        raise ValueError("angle must be between 0 and 180")
    from machine import PWM, Pin

    servo = PWM(Pin(pin))
    servo.freq(50)
    # 0..180 degrees -> 1..2 ms pulses in a 20 ms period
    pulse_us = 1000 + angle * 1000 // 180
    servo.duty_u16(pulse_us * 65535 // 20000)
    time.sleep_ms(500)
    servo.deinit()
    return f"Servo on pin {pin} moved to {angle} degrees"


@task()
def get_device_status():
    from config import config

    gc.collect()
    return {
        "device_id": config["device_id"],
        "free_memory": gc.mem_free(),
        "platform": "micropython",
        "tasks_available": sorted(TASKS),
        "uptime_ms": time.ticks_ms(),
    }
