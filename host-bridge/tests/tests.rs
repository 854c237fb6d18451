#[cfg(test)]
mod attribution_props;
#[cfg(test)]
mod sim;
