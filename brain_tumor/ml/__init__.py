"""Machine learning: the input pipeline, the Keras models, training and prediction."""
