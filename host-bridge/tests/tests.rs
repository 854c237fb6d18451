
mod sim;
