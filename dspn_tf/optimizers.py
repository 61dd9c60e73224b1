"""Adam with epsilon where Kingma & Ba's Algorithm 1 (and PyTorch) put it.

`keras.optimizers.Adam` adds epsilon to the raw `sqrt(v)` ("epsilon hat"),
which amounts to `m_hat / (sqrt(v_hat) + epsilon / sqrt(1 - beta_2^t))`: an
epsilon up to 1 / sqrt(1 - beta_2) = 32x larger in the first steps. Weights
whose gradients are not much larger than that epsilon, as the DSPN encoder's
are, then take smaller first updates than Algorithm 1 gives them
(benchmarks/README.md, "Adam's epsilon", has the measurements). `Adam` here
computes `m_hat / (sqrt(v_hat) + epsilon)`, the update of the paper's code.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dspn_tf")
class Adam(keras.optimizers.Adam):
    """Adam whose epsilon is added to the bias-corrected `sqrt(v_hat)`.

    Takes the arguments of `keras.optimizers.Adam` and keeps its slot
    variables (so checkpoints of either restore into the other); only the
    update differs:

        m_t = beta_1 m + (1 - beta_1) g,    v_t = beta_2 v + (1 - beta_2) g^2
        w -= lr * (m_t / (1 - beta_1^t)) / (sqrt(v_t / (1 - beta_2^t)) + epsilon)

    With `amsgrad=True`, `v_t` is replaced by its running maximum, as in
    PyTorch.

    Args:
        learning_rate: A float or a `keras.optimizers.schedules.LearningRateSchedule`.
        epsilon: Added to `sqrt(v_hat)` (default 1e-8, PyTorch's and the paper's).
        **kwargs: The other arguments of `keras.optimizers.Adam`.

    Example:

    >>> optimizer = Adam(learning_rate=1e-2)
    >>> w = keras.Variable([1.0])
    >>> optimizer.apply([ops.convert_to_tensor([1e-9])], [w])
    >>> round(float(w[0]), 6)  # One step of lr * g / (|g| + eps) = 1e-2 * 0.0909.
    0.999091
    """

    def __init__(self, learning_rate=0.001, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), step)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        if self.amsgrad:
            v_max = self._velocity_hats[index]
            self.assign(v_max, ops.maximum(v_max, v))
            v = v_max
        denominator = ops.add(ops.sqrt(ops.divide(v, 1 - beta_2_power)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / (1 - beta_1_power)), denominator))
