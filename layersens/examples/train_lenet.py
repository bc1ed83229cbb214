"""Trains the shipped LeNet on scikit-learn's digits and writes the example checkpoints.

    python -m layersens.examples.train_lenet [--epochs 12] [--seed 0]

The 1,797 8×8 digits shipped inside scikit-learn (no download) are resized to 28×28×1 and split into 1,497
training and 300 held-out images (a fixed permutation). The held-out accuracy is printed and recorded in each
checkpoint's description. The same weights are written as a linen model (``lenet_digits``) and as an NNX model
(``lenet_digits_nnx``), each with 16 held-out images as its default inputs.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from layersens import save_model
from layersens.examples import LENET_DIGITS, LENET_DIGITS_NNX
from layersens.examples.lenet import INPUT_SHAPE, LeNet, nnx_from_linen, resize_digits

NUM_HELDOUT = 300
NUM_EXAMPLE_INPUTS = 16


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.asarray(resize_digits(digits.images))
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:NUM_HELDOUT], order[NUM_HELDOUT:]
    return (x[train], y[train]), (x[test], y[test])


def train(epochs: int = 12, seed: int = 0, batch_size: int = 64):
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed)
    model = LeNet()
    variables = model.init(jax.random.key(seed), x_train[:1], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    schedule = optax.cosine_decay_schedule(3e-3, epochs * (len(x_train) // batch_size))
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

    @jax.jit
    def accuracy(params, batch_stats, x, y):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, x_train[idx], y_train[idx])
        acc = float(accuracy(params, batch_stats, x_test, y_test))
        print(f"epoch {epoch + 1:2d}  loss {float(loss):.4f}  held-out accuracy {acc:.4f}")
    return model, {"params": params, "batch_stats": batch_stats}, acc, (x_test, y_test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, variables, acc, (x_test, y_test) = train(args.epochs, args.seed)
    variables = jax.tree.map(np.asarray, variables)
    description = (
        f"LeNet-style CNN on scikit-learn digits resized to 28x28; held-out accuracy {acc:.4f} on {NUM_HELDOUT} "
        f"images (seed {args.seed}, {args.epochs} epochs). Default inputs: the first {NUM_EXAMPLE_INPUTS} held-out "
        f"images, labels {y_test[:NUM_EXAMPLE_INPUTS].tolist()}."
    )
    inputs = x_test[:NUM_EXAMPLE_INPUTS]
    save_model(
        LENET_DIGITS,
        model,
        variables,
        input_shape=INPUT_SHAPE,
        call_kwargs={"train": False},
        example_inputs=inputs,
        description=description,
        overwrite=True,
    )
    save_model(
        LENET_DIGITS_NNX,
        nnx_from_linen(variables),
        input_shape=INPUT_SHAPE,
        example_inputs=inputs,
        description=description + " NNX port of the same weights.",
        overwrite=True,
    )
    print(f"wrote {LENET_DIGITS} and {LENET_DIGITS_NNX}")


if __name__ == "__main__":
    main()
